"""What the controller writes, as plain dicts: pure functions of the plan, no client calls.

Per revision (a :class:`~serving.control.policy.plan.Workload`): a Deployment running
``turnout serve`` and a Service in front of it, plus an autoscaler when the replicas may vary
(an HPA for ``scaleMetric`` cpu/memory, a KEDA ScaledObject on the router's metrics for
concurrency/rps and for scale-to-zero). Per namespace: the router (Deployment, Service) and the
ConfigMap holding its routes (:attr:`~serving.control.policy.plan.Desired.routes`, whose
endpoints are the revisions' Service DNS names). Everything carries owner references to the
InferenceService(s) it serves, so deleting them lets the garbage collector remove the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from serving.control.kube import secure
from serving.control.kube.secure import AuthSettings, TlsSettings
from serving.control.policy.autoscale import knative_settings
from serving.control.policy.plan import Desired, Workload
from serving.control.policy.routes import Endpoints
from serving.control.policy.transformers import THREADS, TransformerWorkload
from serving.spec.inferenceservice import InferenceService
from serving.spec.routes import RouterConfig

GROUP = "serving.turnout.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
HTTP_PORT = 8080
GRPC_PORT = 8081
ROUTER_ADMIN_PORT = 8090
ROUTES_FILE = "routes.yaml"
ROUTES_DIR = "/etc/turnout"
MANAGED_BY = "turnout-controller"
HELD_METRIC = "turnout_router_held_requests"


@dataclass(frozen=True)
class Settings:
    """What a cluster decides rather than a manifest."""

    namespace: str
    image: str = "turnout:latest"
    image_pull_policy: str | None = None
    drain_seconds: int = 30
    grace_margin_seconds: int = 10        # terminationGracePeriodSeconds = drain + this
    hpa_api_version: str = "autoscaling/v2"  # autoscaling/v2beta2 on servers before 1.23
    prometheus_url: str = "http://prometheus.monitoring.svc:9090"  # what KEDA queries
    keda_polling_seconds: int = 15
    router_name: str = "turnout-router"
    router_replicas: int = 1
    rate_window: str = "1m"               # PromQL rate() window for KEDA's queries
    images: Mapping[str, str] = field(default_factory=dict)        # image family -> image
    runtime_families: Mapping[str, str] = field(default_factory=dict)  # runtime -> family
    router_image: str | None = None
    server_resources: Mapping[str, Any] = field(default_factory=dict)  # unless the ISVC says
    router_resources: Mapping[str, Any] = field(default_factory=dict)
    router_service_type: str = "ClusterIP"
    image_pull_secrets: Sequence[Mapping[str, str]] = ()
    trusted_sources: Sequence[str] = ()  # storageUri prefixes whose pickles may load
    # Authentication and TLS of the router and the replicas (serving/control/kube/secure.py).
    router_auth: AuthSettings = AuthSettings()
    router_tls: TlsSettings = TlsSettings()
    server_auth: AuthSettings = AuthSettings()
    server_tls: TlsSettings = TlsSettings()
    router_ca_file: str | None = None     # what the controller verifies the router's TLS with
    network_policy: bool = True           # only the router (and allow_from) reach replicas
    network_policy_allow_from: Sequence[Mapping[str, Any]] = ()  # NetworkPolicyPeer objects

    def image_for(self, runtime: str) -> str:
        """The model server image for a Turnout runtime: its family's (the chart's
        ``runtime.runtimes``), else the ``all`` family's, else ``image``."""
        family = self.runtime_families.get(runtime, "all")
        return self.images.get(family) or self.images.get("all") or self.image


@dataclass(frozen=True)
class Owner:
    """An InferenceService (or graph) the objects belong to."""

    name: str
    uid: str
    kind: str = "InferenceService"
    api_version: str = API_VERSION

    def reference(self, *, controller: bool) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
                "uid": self.uid, "controller": controller, "blockOwnerDeletion": True}


# -- names ----------------------------------------------------------------------------------

def predictor_name(revision: str) -> str:
    return f"{revision}-predictor"


def routes_name(settings: Settings) -> str:
    return f"{settings.router_name}-routes"


def endpoints(revision: str, settings: Settings, host: str | None = None) -> Endpoints:
    """How the router reaches a revision: its Service's cluster DNS name (``host``: another
    Service's, a transformer's)."""
    host = host or f"{predictor_name(revision)}.{settings.namespace}.svc"
    scheme, grpc = secure.schemes(settings.server_tls)
    return Endpoints(http=[f"{scheme}://{host}:{HTTP_PORT}"], grpc=[f"{grpc}{host}:{GRPC_PORT}"])


def router_url(settings: Settings) -> str:
    """The namespace's router as clients in the cluster reach it (https under its TLS)."""
    scheme = "https" if settings.router_tls.enabled else "http"
    return f"{scheme}://{settings.router_name}.{settings.namespace}.svc:{HTTP_PORT}"


def predictor_labels(workload: Workload) -> dict[str, str]:
    """Labels of a revision's objects (the role moves between revisions: not on pods)."""
    return {**_pod_labels(workload), f"{GROUP}/role": workload.role}


def _pod_labels(workload: Workload) -> dict[str, str]:
    return {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/instance": workload.service,
            "app.kubernetes.io/component": "predictor",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            f"{GROUP}/service": workload.service, f"{GROUP}/revision": workload.revision}


def router_labels(settings: Settings) -> dict[str, str]:
    return {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/instance": settings.router_name,
            "app.kubernetes.io/component": "router", "app.kubernetes.io/managed-by": MANAGED_BY}


def router_selector(settings: Settings) -> dict[str, str]:
    return {"app.kubernetes.io/instance": settings.router_name,
            "app.kubernetes.io/component": "router"}


def _meta(name: str, settings: Settings, labels: Mapping[str, str],
          owners: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "namespace": settings.namespace, "labels": dict(labels),
            "ownerReferences": list(owners)}


def _ports() -> list[dict[str, Any]]:
    return [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"}]


def _container_ports() -> list[dict[str, Any]]:
    return [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}]


# -- a revision -----------------------------------------------------------------------------

def serve_args(workload: Workload, settings: Settings) -> list[str]:
    """``turnout serve``'s flags, authentication and TLS last (:func:`server_security`)."""
    args = ["serve", workload.storage_uri, "--name", workload.model_name,
            "--runtime", workload.runtime, "--host", "0.0.0.0",
            "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
            "--drain-seconds", str(settings.drain_seconds)]
    if workload.model_version is not None:
        args += ["--model-version", workload.model_version]
    if workload.max_batch_size is not None:
        args += ["--max-batch-size", str(workload.max_batch_size)]
        if workload.max_batch_latency_ms is not None:
            args += ["--max-batch-latency-ms", str(workload.max_batch_latency_ms)]
    for source in settings.trusted_sources:
        args += ["--trusted-source", source]
    return args + server_security(settings).args


def server_security(settings: Settings) -> secure.Wiring:
    """A replica's authentication and TLS. Without ``modelServer.auth`` it runs
    ``--insecure``, as KServe's predictors do: the namespace's NetworkPolicy
    (:func:`predictor_network_policy`) admits only the router, which authenticates callers;
    with it, the replica checks the credential the router passes on, too."""
    return secure.auth_wiring(settings.server_auth) + secure.tls_wiring(settings.server_tls)


def predictor_probes(workload: Workload, settings: Settings) -> dict[str, Any]:
    """Readiness on the model's own path, which needs a credential once the replica
    authenticates: then the server's (open) readiness, which waits for its one model too."""
    ready = "/v2/health/ready" if settings.server_auth.configured \
        else f"/v2/models/{workload.model_name}/ready"
    tls = settings.server_tls
    return {"readinessProbe": secure.probe(ready, tls, periodSeconds=2, failureThreshold=2),
            "livenessProbe": secure.probe("/v2/health/live", tls, periodSeconds=10,
                                          failureThreshold=3)}


# Pod fields of KServe's predictor that a Deployment takes as they are.
_POD_FIELDS = ("serviceAccountName", "nodeSelector", "tolerations", "affinity",
               "imagePullSecrets", "priorityClassName")


def predictor_deployment(workload: Workload, isvc: InferenceService, owner: Owner,
                         settings: Settings) -> dict[str, Any]:
    name = predictor_name(workload.revision)
    model = isvc.spec.predictor.resolved()
    container: dict[str, Any] = {
        "name": "kserve-container", "image": settings.image_for(workload.runtime),
        "command": ["turnout"], "args": serve_args(workload, settings),
        "ports": _container_ports(), **predictor_probes(workload, settings),
    }
    wiring = server_security(settings)
    if wiring.mounts:
        container["volumeMounts"] = wiring.mounts
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    if model.resources or settings.server_resources:
        container["resources"] = dict(model.resources or settings.server_resources)
    if model.env:
        container["env"] = model.env
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": settings.drain_seconds + settings.grace_margin_seconds}
    if wiring.volumes:
        pod["volumes"] = wiring.volumes
    predictor = isvc.spec.predictor
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [dict(s) for s in settings.image_pull_secrets]
    for pod_field in _POD_FIELDS:
        value = getattr(predictor, pod_field)
        if value is not None:
            pod[pod_field] = value
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(name, settings, predictor_labels(workload),
                          [owner.reference(controller=True)]),
        "spec": {"replicas": workload.replicas,
                 "selector": {"matchLabels": {f"{GROUP}/revision": workload.revision}},
                 "template": {"metadata": {"labels": _pod_labels(workload)}, "spec": pod}},
    }


def predictor_service(workload: Workload, owner: Owner, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(predictor_name(workload.revision), settings, predictor_labels(workload),
                          [owner.reference(controller=True)]),
        "spec": {"type": "ClusterIP", "selector": {f"{GROUP}/revision": workload.revision},
                 "ports": _ports()},
    }


def scale_metric(isvc: InferenceService) -> str:
    """concurrency, rps, cpu or memory: the field, else Knative's annotation."""
    metric = isvc.spec.predictor.scaleMetric
    if metric is None:
        try:
            metric = str(knative_settings(isvc).get("metric") or "")
        except ValueError:
            metric = ""
    return metric or "concurrency"


def autoscaled(workload: Workload) -> bool:
    """Whether an autoscaler owns the revision's replica count (the controller then leaves
    the Deployment's ``replicas`` as the autoscaler set it)."""
    policy = workload.policy
    return policy.min_replicas != policy.max_replicas or policy.min_replicas == 0


def autoscaler(workload: Workload, isvc: InferenceService, owner: Owner,
               settings: Settings) -> dict[str, Any] | None:
    """An HPA (cpu/memory, at least one replica) or a KEDA ScaledObject (concurrency, rps,
    scale-to-zero); None for a fixed replica count."""
    if not autoscaled(workload):
        return None
    policy = workload.policy
    metric = scale_metric(isvc)
    name = predictor_name(workload.revision)
    meta = _meta(name, settings, predictor_labels(workload), [owner.reference(controller=True)])
    target_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    utilization = int(isvc.spec.predictor.scaleTarget or 80)
    if metric in ("cpu", "memory") and policy.min_replicas >= 1:
        return {"apiVersion": settings.hpa_api_version, "kind": "HorizontalPodAutoscaler",
                "metadata": meta,
                "spec": {"scaleTargetRef": target_ref, "minReplicas": policy.min_replicas,
                         "maxReplicas": policy.max_replicas,
                         "metrics": [{"type": "Resource", "resource": {
                             "name": metric, "target": {"type": "Utilization",
                                                        "averageUtilization": utilization}}}]}}
    held = f'sum({HELD_METRIC}{{{_selector(workload)}}})'
    if metric in ("cpu", "memory"):  # scale-to-zero: the resource, and held requests to wake up
        triggers = [{"type": metric, "metricType": "Utilization",
                     "metadata": {"value": str(utilization)}},
                    _prometheus(settings, f"{held} or vector(0)", 1)]
    else:
        triggers = [_prometheus(settings, demand_query(workload, metric, settings),
                                policy.target)]
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": meta,
            "spec": {"scaleTargetRef": {"name": name},
                     "minReplicaCount": policy.min_replicas,
                     "maxReplicaCount": policy.max_replicas,
                     "pollingInterval": settings.keda_polling_seconds,
                     "cooldownPeriod": int(policy.scale_to_zero_grace),
                     "triggers": triggers}}


def _selector(workload: Workload) -> str:
    return f'service="{workload.service}",variant="{workload.role}"'


def demand_query(workload: Workload, metric: str, settings: Settings) -> str:
    """The variant's load in the router's metrics: requests held for a replica, plus requests
    in flight (concurrency: by Little's law, the rate of the latency sum) or per second (rps)."""
    sel, window = _selector(workload), settings.rate_window
    if metric == "rps":
        load = f"sum(rate(turnout_router_requests_total{{{sel}}}[{window}]))"
    else:
        load = f"sum(rate(turnout_router_request_duration_seconds_sum{{{sel}}}[{window}]))"
    return f"({load} or vector(0)) + (sum({HELD_METRIC}{{{sel}}}) or vector(0))"


def _prometheus(settings: Settings, query: str, threshold: float) -> dict[str, Any]:
    return {"type": "prometheus", "metadata": {
        "serverAddress": settings.prometheus_url, "query": query,
        "threshold": _number(threshold), "activationThreshold": "0"}}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def revision_objects(workload: Workload, isvc: InferenceService, owner: Owner,
                     settings: Settings) -> list[dict[str, Any]]:
    objects = [predictor_deployment(workload, isvc, owner, settings),
               predictor_service(workload, owner, settings)]
    scaler = autoscaler(workload, isvc, owner, settings)
    return objects + ([scaler] if scaler is not None else [])


# -- the namespace's router -----------------------------------------------------------------

def routes_yaml(routes: RouterConfig) -> str:
    return yaml.safe_dump(routes.model_dump(mode="json", by_alias=True, exclude_none=True),
                          sort_keys=False)


def router_configmap(routes: RouterConfig, owners: Sequence[Owner],
                     settings: Settings) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(routes_name(settings), settings, router_labels(settings),
                              _shared(owners)),
            "data": {ROUTES_FILE: routes_yaml(routes)}}


def router_security(settings: Settings) -> secure.Wiring:
    """The router's authentication (``--insecure`` without ``router.auth``: the in-cluster
    Service is then open, as KServe's ingress is), its listeners' TLS, and how it verifies
    replicas that serve TLS."""
    return (secure.auth_wiring(settings.router_auth) + secure.tls_wiring(settings.router_tls)
            + secure.upstream_wiring(settings.server_tls))


def router_deployment(owners: Sequence[Owner], settings: Settings) -> dict[str, Any]:
    labels = router_labels(settings)
    wiring = router_security(settings)
    tls = settings.router_tls
    container: dict[str, Any] = {
        "name": "router", "image": settings.router_image or settings.image,
        "command": ["turnout"],
        "args": ["router", "--config", f"{ROUTES_DIR}/{ROUTES_FILE}", "--host", "0.0.0.0",
                 "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
                 "--admin-host", "127.0.0.1", "--admin-port", str(ROUTER_ADMIN_PORT),
                 "--drain-seconds", str(settings.drain_seconds), *wiring.args],
        "ports": _container_ports(),
        "readinessProbe": secure.probe("/v2/health/ready", tls, periodSeconds=2),
        "livenessProbe": secure.probe("/v2/health/live", tls, periodSeconds=10),
        "volumeMounts": [{"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True},
                         *wiring.mounts]}
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    if settings.router_resources:
        container["resources"] = dict(settings.router_resources)
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": settings.drain_seconds + settings.grace_margin_seconds,
        "volumes": [{"name": "routes", "configMap": {"name": routes_name(settings)}},
                    *wiring.volumes]}
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [dict(s) for s in settings.image_pull_secrets]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(settings.router_name, settings, labels, _shared(owners)),
            "spec": {"replicas": settings.router_replicas,
                     "selector": {"matchLabels": router_selector(settings)},
                     "template": {"metadata": {"labels": labels}, "spec": pod}}}


def router_service(owners: Sequence[Owner], settings: Settings) -> dict[str, Any]:
    """The router's public ports; its admin API stays on the pod's loopback."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(settings.router_name, settings, router_labels(settings),
                              _shared(owners)),
            "spec": {"type": settings.router_service_type,
                     "selector": router_selector(settings),
                     "ports": _ports()}}


def predictor_network_policy(owners: Sequence[Owner], settings: Settings) -> dict[str, Any]:
    """Ingress to the namespace's predictor pods from its router's pods (and the configured
    ``allowFrom`` peers) only: what makes replicas' ``--insecure`` safe."""
    return secure.network_policy(
        f"{settings.router_name}-predictors", settings.namespace,
        predictors={"app.kubernetes.io/managed-by": MANAGED_BY,
                    "app.kubernetes.io/component": "predictor"},
        router=router_selector(settings), allow_from=settings.network_policy_allow_from,
        ports=(HTTP_PORT, GRPC_PORT), labels=router_labels(settings), owners=_shared(owners))


def _shared(owners: Sequence[Owner]) -> list[dict[str, Any]]:
    """Every owner, none the controller: the router goes with the namespace's last service."""
    return [o.reference(controller=False) for o in sorted(owners, key=lambda o: o.name)]


# -- everything -----------------------------------------------------------------------------

def render(desired: Desired, services: Mapping[str, tuple[InferenceService, Owner]],
           settings: Settings) -> list[dict[str, Any]]:
    """Every object the namespace should hold for ``desired``: per revision, then the router.
    ``services``: each InferenceService by name, with its owner reference."""
    objects: list[dict[str, Any]] = []
    for workload in desired.workloads.values():
        isvc, owner = services[workload.service]
        objects += revision_objects(workload, isvc, owner, settings)
    for transformer in desired.transformers.values():
        isvc, owner = services[transformer.service]
        objects += transformer_objects(transformer, isvc, owner, settings)
    owners = [owner for _, owner in services.values()]
    if owners:
        objects += [router_configmap(desired.routes, owners, settings),
                    router_deployment(owners, settings), router_service(owners, settings)]
        if settings.network_policy:
            objects.append(predictor_network_policy(owners, settings))
            if desired.transformers:
                objects += transformer_network_policies(owners, settings)
    return objects


# -- a revision's transformer (policy/transformers.py) ---------------------------------------

def transformer_endpoints(workload: TransformerWorkload, settings: Settings) -> Endpoints:
    """How the router reaches a revision's transformer: its Service's cluster DNS name."""
    return endpoints(workload.name, settings, host=f"{workload.name}.{settings.namespace}.svc")


def transformer_labels(workload: TransformerWorkload) -> dict[str, str]:
    """The transformer's pods: its own revision label (its name), component transformer."""
    return {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/instance": workload.service,
            "app.kubernetes.io/component": "transformer",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            f"{GROUP}/service": workload.service, f"{GROUP}/revision": workload.name}


def predictor_host(workload: TransformerWorkload, settings: Settings) -> str:
    """The revision's predictor Service as the transformer calls it (``HOST:PORT``)."""
    port = GRPC_PORT if workload.transformer.protocol == "grpc-v2" else HTTP_PORT
    return f"{predictor_name(workload.revision)}.{settings.namespace}.svc:{port}"


def transformer_container(workload: TransformerWorkload, settings: Settings) -> dict[str, Any]:
    """Turnout's form: ``turnout serve --transformer-for`` on the model server image. KServe's
    containers form: the manifest's container, its ``--predictor_host`` (and ``--model_name``
    when absent) pointing at the revision's predictor Service, as KServe fills them."""
    spec = workload.transformer
    if spec.model_class is None:
        container = dict(spec.container or {})
        args = _set_argument(list(container.get("args") or []), "--predictor_host",
                             predictor_host(workload, settings))
        if not any(a.partition("=")[0] == "--model_name" for a in args):
            args += ["--model_name", workload.model_name]
        container.update(name=container.get("name") or "kserve-container", args=args)
        container.setdefault("ports", _container_ports())
        return container
    args = ["serve", spec.resolved_uri or spec.storage_uri, "--name", workload.model_name,
            "--model-class", spec.model_class,
            "--transformer-for", predictor_host(workload, settings),
            "--predictor-protocol", spec.protocol, "--predictor-model", workload.model_name,
            "--inference-threads", str(THREADS), "--host", "0.0.0.0",
            "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
            "--drain-seconds", str(settings.drain_seconds)]
    if spec.timeout_seconds:
        args += ["--predictor-timeout", str(spec.timeout_seconds)]
    probes = predictor_probes(Workload(
        service=workload.service, revision=workload.name, role="stable",
        model_name=workload.model_name, storage_uri="", runtime="python",
        replicas=workload.replicas, policy=None), settings)  # type: ignore[arg-type]
    container = {"name": "kserve-container", "image": settings.image_for("python"),
                 "command": ["turnout"], "args": args + transformer_security(settings).args,
                 "ports": _container_ports(), **probes}
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    return container


def transformer_security(settings: Settings) -> secure.Wiring:
    """The transformer's own listener is secured as a replica's (:func:`server_security`);
    with replica TLS it also calls its predictor over TLS, verified against the replicas'
    Secret's ``ca.crt`` (presenting its ``tls.crt`` when they verify clients), as the router
    does."""
    wiring = server_security(settings)
    tls = settings.server_tls
    if not tls.enabled:
        return wiring
    upstream = secure.upstream_wiring(tls)
    args = ["--predictor-ca", secure.file_in("upstream-tls", "ca.crt")]
    if tls.verify_clients:
        args += ["--predictor-cert", secure.file_in("upstream-tls", "tls.crt"),
                 "--predictor-key", secure.file_in("upstream-tls", "tls.key")]
    return wiring + secure.Wiring(args, upstream.volumes, upstream.mounts)


def _set_argument(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (``--flag v`` or ``--flag=v``), else added."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return [*args[:i + 1], value, *args[i + 2:]]
        if arg.startswith(f"{flag}="):
            return [*args[:i], f"{flag}={value}", *args[i + 1:]]
    return [*args, flag, value]


def transformer_deployment(workload: TransformerWorkload, isvc: InferenceService, owner: Owner,
                           settings: Settings) -> dict[str, Any]:
    container = transformer_container(workload, settings)
    wiring = transformer_security(settings)
    pod: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": settings.drain_seconds + settings.grace_margin_seconds}
    if workload.transformer.model_class is not None and wiring.mounts:
        container["volumeMounts"] = wiring.mounts
        pod["volumes"] = wiring.volumes
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [dict(s) for s in settings.image_pull_secrets]
    spec = isvc.spec.transformer
    for pod_field in ("serviceAccountName", "nodeSelector", "tolerations", "affinity",
                      "imagePullSecrets"):
        value = getattr(spec, pod_field, None) if spec is not None else None
        if value is not None:
            pod[pod_field] = value
    labels = transformer_labels(workload)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(workload.name, settings, labels, [owner.reference(controller=True)]),
        "spec": {"replicas": workload.replicas,
                 "selector": {"matchLabels": {f"{GROUP}/revision": workload.name}},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def transformer_service(workload: TransformerWorkload, owner: Owner,
                        settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(workload.name, settings, transformer_labels(workload),
                          [owner.reference(controller=True)]),
        "spec": {"type": "ClusterIP", "selector": {f"{GROUP}/revision": workload.name},
                 "ports": _ports()},
    }


def transformer_objects(workload: TransformerWorkload, isvc: InferenceService, owner: Owner,
                        settings: Settings) -> list[dict[str, Any]]:
    return [transformer_deployment(workload, isvc, owner, settings),
            transformer_service(workload, owner, settings)]


def transformer_network_policies(owners: Sequence[Owner],
                                 settings: Settings) -> list[dict[str, Any]]:
    """Transformers take traffic from the router (and ``allowFrom``) only, as predictors do;
    predictors also from the namespace's transformers (NetworkPolicies add up)."""
    transformers = {"app.kubernetes.io/managed-by": MANAGED_BY,
                    "app.kubernetes.io/component": "transformer"}
    predictors = {**transformers, "app.kubernetes.io/component": "predictor"}
    common = {"ports": (HTTP_PORT, GRPC_PORT), "labels": router_labels(settings),
              "owners": _shared(owners)}
    return [secure.network_policy(f"{settings.router_name}-transformers", settings.namespace,
                                  predictors=transformers, router=router_selector(settings),
                                  allow_from=settings.network_policy_allow_from, **common),
            secure.network_policy(f"{settings.router_name}-predictors-from-transformers",
                                  settings.namespace, predictors=predictors, router=transformers,
                                  allow_from=(), **common)]
