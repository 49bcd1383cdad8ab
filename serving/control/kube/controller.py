"""The Kubernetes controller: ``turnout up``'s loop, with the cluster as the world.

Kopf handlers are thin: an InferenceService's create/update/resume applies its manifest to the
revision state kept in its ``status.turnout`` (:func:`~serving.control.policy.revisions.apply_manifest`,
KServe's semantics); a timer per resource runs the progressive rollout's
:func:`~serving.control.policy.rollout.step` on the router's counters; every event then
re-plans the whole namespace (one router serves all of its services):
observe → :func:`~serving.control.policy.plan.plan` → act, through
:class:`~serving.control.kube.actuator.KubeObserver` and
:class:`~serving.control.kube.actuator.KubeActuator`, and writes each resource's status
(conditions, URL, traffic split, the state) only when it changed. Problems the CRD schema
cannot express (:func:`serving.control.policy.validate.problems`) become a ``Ready=False``
condition with the message; the other resources carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.control.kube import resources
from serving.control.kube.actuator import (
    Kube,
    KubeActuator,
    KubeObserver,
    MetricsSource,
    router_metrics_source,
)
from serving.control.kube.render import API_VERSION, Settings
from serving.control.policy import revisions as rev
from serving.control.policy import validate
from serving.control.policy.autoscale import scale_policy
from serving.control.policy.plan import Observed, plan
from serving.control.policy.ports import Observation
from serving.control.policy.rollout import step
from serving.control.policy.transformers import serving_ready
from serving.control.registry import (
    RegistryLink,
    RegistryProblem,
    follows_alias,
    is_registry_uri,
)
from serving.spec import InferenceGraph, InferenceService
from serving.spec.load import ManifestError

log = logging.getLogger("turnout.kube")

TICK_SECONDS = 5.0
REGISTRY_POLL_SECONDS = 30.0
# Where pods can fetch a registry version from themselves (the model server's storage layer).
POD_FETCHABLE = ("s3://", "s3a://", "gs://", "gcs://", "http://", "https://")


@dataclass
class Namespace:
    """One namespace's observer, actuator and lock (its reconciles never interleave)."""

    observer: KubeObserver
    actuator: KubeActuator
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    observation: Observation = field(default_factory=Observation)


@dataclass
class Controller:
    kube: Kube
    settings: Settings                       # namespace is filled per namespace
    metrics: Callable[[Settings], MetricsSource] = router_metrics_source
    retire_seconds: float = 30.0
    clock: Callable[[], float] = time.time
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    hpa_api_version: str | None = None
    # models:/ URIs: MLflow's registry by MLFLOW_TRACKING_URI (the chart sets it); aliases are
    # checked every registry_poll seconds from the resource's timer.
    registry: RegistryLink = field(default_factory=RegistryLink)
    registry_poll: float = REGISTRY_POLL_SECONDS
    _polled: dict[tuple[str, str], float] = field(default_factory=dict)

    def namespace(self, name: str) -> Namespace:
        if name not in self.namespaces:
            if self.hpa_api_version is None:
                self.hpa_api_version = "autoscaling/v2" if self.kube.served("autoscaling/v2") \
                    else "autoscaling/v2beta2"
            settings = Settings(**{**self.settings.__dict__, "namespace": name,
                                   "hpa_api_version": self.hpa_api_version})
            self.namespaces[name] = Namespace(
                KubeObserver(self.kube, settings, self.metrics(settings)),
                KubeActuator(self.kube, settings, retire_seconds=self.retire_seconds,
                             clock=self.clock))
        return self.namespaces[name]

    # -- handlers' entry points -------------------------------------------------------------

    async def applied(self, body: dict[str, Any]) -> None:
        """An InferenceService was created or changed (or the controller started)."""
        ns = self.namespace(body["metadata"]["namespace"])
        async with ns.lock:
            await self._apply(body)
            await self._sync(body["metadata"]["namespace"], ns)

    async def tick(self, body: dict[str, Any]) -> None:
        """A resource's timer: its rollout steps on fresh counters, then the namespace re-plans."""
        namespace = body["metadata"]["namespace"]
        ns = self.namespace(namespace)
        async with ns.lock:
            ns.observation = await ns.observer.observe(counters=True)
            live = await asyncio.to_thread(self.kube.get, API_VERSION, "InferenceService",
                                           namespace, body["metadata"]["name"])
            if live is not None and self._alias_due(live):
                await self._apply(live)
            if live is not None:
                await self._step(live, ns.observation)
            await self._sync(namespace, ns, observation=ns.observation)

    async def changed(self, namespace: str) -> None:
        """Something else changed (a graph, a deletion): re-plan the namespace."""
        ns = self.namespace(namespace)
        async with ns.lock:
            await self._sync(namespace, ns)

    # -- the steps --------------------------------------------------------------------------

    def _alias_due(self, body: dict[str, Any]) -> bool:
        """Whether the resource follows a registry alias whose last check is old enough."""
        try:
            isvc = resources.manifest(body)
        except (ManifestError, ValueError):
            return False
        if not isinstance(isvc, InferenceService) or self.registry_poll <= 0 \
                or not follows_alias(isvc.spec.predictor.resolved().storageUri or ""):
            return False
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        return self.clock() - self._polled.get(key, 0.0) >= self.registry_poll

    async def _apply(self, body: dict[str, Any]) -> None:
        try:
            isvc = resources.manifest(body)
            assert isinstance(isvc, InferenceService)
            found = validate.service_problems(isvc) + self._auth_problems(isvc)
            if found:
                raise ManifestError("; ".join(found))
            uri = isvc.spec.predictor.resolved().storageUri or ""
            pin, location = await self._locate(body, uri) if is_registry_uri(uri) else (None, None)
        except (ManifestError, ValueError) as exc:
            log.warning("%s: %s", resources.where(body), exc)
            await self._write_status(body, resources.invalid_status(body, str(exc)))
            return
        saved = resources.saved_state(body)
        state = rev.apply_manifest(saved, isvc, now=self.clock(), resolved_uri=location, pin=pin)
        events = rev.new_events(saved, state)
        for event in events:
            log.info("%s: %s", resources.where(body), event.message)
        self._record_outcomes(body, state, events)
        if state != saved:
            await self._write_status(body, {"turnout": state.model_dump(mode="json")})

    def _auth_problems(self, isvc: InferenceService) -> list[str]:
        """Per-service principals need the router to authenticate (it refuses routes naming
        them otherwise, and the whole namespace's routing would stall on the one service)."""
        extra = isvc.spec.turnout
        if extra is not None and extra.auth is not None and \
                not self.settings.router_auth.configured:
            return ["spec.turnout.auth names principals, but the namespace's router "
                    "authenticates no one: set the chart's runtime.router.auth (API keys "
                    "or JWT)"]
        return []

    async def _locate(self, body: dict[str, Any], uri: str) -> tuple[rev.Pin, str]:
        """A registry URI's version now, and where its pods fetch it from; a ManifestError
        says why it cannot be served (the resource's Ready condition carries it)."""
        self._polled[(body["metadata"]["namespace"], body["metadata"]["name"])] = self.clock()
        if self.registry.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
            raise ManifestError(f"storageUri {uri!r}: no model registry is configured (the "
                                "chart's registry.trackingUri, MLFLOW_TRACKING_URI)")
        try:
            found = await asyncio.to_thread(self.registry.locate, uri, fetch=False)
        except RegistryProblem as exc:
            raise ManifestError(f"storageUri {uri!r}: {exc}") from None
        if not found.location.startswith(POD_FETCHABLE):
            raise ManifestError(
                f"storageUri {uri!r} is {found.pinned_uri}, whose files are at "
                f"{found.location!r}, which pods cannot fetch: give the MLflow server an "
                "object-store artifact root (s3://, gs://) or serve its artifacts over http(s)")
        return found.pin, found.location

    def _record_outcomes(self, body: dict[str, Any], state: rev.ServiceState,
                         events: list[rev.Event]) -> None:
        """Tag promoted and rolled-back registry versions (in the background)."""
        for event in events:
            if event.kind == "promoted":
                revision, outcome = state.revisions.get(state.stable), "promoted"
            elif event.kind == "rolled_back" and state.canary is not None:
                revision, outcome = state.revisions.get(state.canary), "rolled-back"
            else:
                continue
            if revision is None or not revision.pinned_uri:
                continue
            asyncio.get_running_loop().create_task(asyncio.to_thread(
                self._tag, revision.pinned_uri, outcome, event.message, state.name))

    def _tag(self, pinned_uri: str, outcome: str, reason: str, service: str) -> None:
        try:
            self.registry.record(pinned_uri, outcome=outcome, reason=reason, service=service)
        except RegistryProblem as exc:
            log.warning("%s: could not tag %s as %s: %s", service, pinned_uri, outcome, exc)

    async def _step(self, body: dict[str, Any], observation: Observation) -> None:
        state = resources.saved_state(body)
        if state is None or observation.counters is None:
            return
        try:
            isvc = resources.manifest(body)
        except ManifestError:
            return
        assert isinstance(isvc, InferenceService)
        rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
        name = isvc.name
        after = step(state, rollout, canary=observation.counters.get((name, "canary")),
                     stable=observation.counters.get((name, "stable")),
                     canary_ready=state.canary is not None and serving_ready(
                         state.canary, state.revisions[state.canary].transformer,
                         observation.endpoints),
                     now=self.clock())
        if after is not state:
            events = rev.new_events(state, after)
            for event in events:
                log.info("%s: %s", resources.where(body), event.message)
            self._record_outcomes(body, after, events)
            await self._write_status(body, {"turnout": after.model_dump(mode="json")})

    async def _sync(self, namespace: str, ns: Namespace, *,
                    observation: Observation | None = None) -> None:
        """Plan the namespace from its resources' states and act; then their statuses."""
        bodies = await asyncio.to_thread(self.kube.list, API_VERSION, "InferenceService",
                                         namespace)
        graph_bodies = await asyncio.to_thread(self.kube.list, API_VERSION, "InferenceGraph",
                                               namespace)
        services: dict[str, tuple[InferenceService, rev.ServiceState, dict[str, Any]]] = {}
        for body in bodies:
            if body["metadata"].get("deletionTimestamp"):
                continue
            state = resources.saved_state(body)
            try:
                isvc = resources.manifest(body)
            except ManifestError:
                continue  # its handler wrote why
            if state is None or not isinstance(isvc, InferenceService) \
                    or validate.service_problems(isvc):
                continue
            services[isvc.name] = (isvc, state, body)
        graphs: list[InferenceGraph] = []
        for body in graph_bodies:
            await self._graph(body, {n: s[0] for n, s in services.items()}, graphs)
        observation = observation or await ns.observer.observe(counters=False)
        replicas = {}
        for revision, count in ns.observer.replicas.items():
            owner = next((s for s in services.values() if revision in s[1].revisions), None)
            if owner is not None and _autoscaled(owner[0]):
                replicas[revision] = count
        desired = plan(services=[(isvc, state) for isvc, state, _ in services.values()],
                       graphs=graphs, observed=Observed(endpoints=observation.endpoints,
                                                        replicas=replicas))
        ns.actuator.services = {name: (isvc, resources.owner(body))
                                for name, (isvc, _, body) in services.items()}
        await ns.actuator.act(desired)
        # a revision with a transformer is ready when both are (policy/transformers.py)
        ready = {r for r in observation.endpoints if r not in desired.transformers
                 or serving_ready(r, desired.transformers[r].transformer, observation.endpoints)}
        for _, state, body in services.values():
            status = resources.service_status(body, state, ready=ready,
                                              settings=ns.actuator.settings,
                                              omitted=desired.omitted)
            await self._write_status(body, status)

    async def _graph(self, body: dict[str, Any], services: dict[str, InferenceService],
                     graphs: list[InferenceGraph]) -> None:
        try:
            graph = resources.manifest(body)
            assert isinstance(graph, InferenceGraph)
            found = validate.graph_problems(graph, services)
            if found:
                raise ManifestError("; ".join(found))
        except (ManifestError, ValueError) as exc:
            await self._write_status(body, resources.invalid_status(body, str(exc)))
            return
        graphs.append(graph)
        settings = self.namespace(body["metadata"]["namespace"]).actuator.settings
        await self._write_status(body, {
            "url": f"http://{settings.router_name}.{settings.namespace}.svc/v2/models/"
                   f"{graph.name}",
            "observedGeneration": body["metadata"].get("generation"),
            "conditions": [resources.condition("Ready", True, "Ready")]})

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """Write the keys of ``status`` that differ from the live ones (JSON patch, so a
        nested value is replaced whole, never merged)."""
        live = body.get("status") or {}
        if "conditions" in status:
            status = {**status, "conditions": resources.merge_conditions(
                live.get("conditions") or [], status["conditions"])}
        ops = [{"op": "add", "path": f"/status/{key}", "value": value}
               for key, value in status.items() if live.get(key) != value]
        if not ops:
            return
        if not body.get("status"):
            ops = [{"op": "add", "path": "/status", "value": status}]
        meta = body["metadata"]
        kind = body["kind"]
        try:
            updated = await asyncio.to_thread(
                self.kube.call, "PATCH",
                self.kube.path(API_VERSION, kind, meta["namespace"], meta["name"], "status"),
                ops, content_type="application/json-patch+json")
        except Exception as exc:  # gone meanwhile, or a conflict: the next event rewrites it
            log.warning("%s: status not written: %s", resources.where(body), exc)
            return
        self.kube.writes.append(("patch/status", kind, meta["name"]))
        body["status"] = updated.get("status") or {}


def _autoscaled(isvc: InferenceService) -> bool:
    policy = scale_policy(isvc)
    return policy.min_replicas != policy.max_replicas or policy.min_replicas == 0


# -- kopf -------------------------------------------------------------------------------------

def register(controller: Controller, registry: Any = None, *,
             tick_seconds: float = TICK_SECONDS) -> Any:
    """Kopf handlers calling ``controller``, in ``registry`` (a new one when None)."""
    import kopf

    registry = registry or kopf.OperatorRegistry()
    group, version = API_VERSION.split("/")

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        """Kopf's watches use the controller's own client configuration."""
        config = controller.kube.api.configuration
        token = (config.api_key or {}).get("authorization", "")
        scheme, _, value = token.partition(" ")
        return kopf.ConnectionInfo(
            server=config.host, insecure=not config.verify_ssl, ca_path=config.ssl_ca_cert,
            scheme=scheme or None, token=value or None,
            certificate_path=config.cert_file, private_key_path=config.key_file,
            username=config.username or None, password=config.password or None)

    @kopf.on.resume(group, version, "inferenceservices", registry=registry)
    @kopf.on.create(group, version, "inferenceservices", registry=registry)
    @kopf.on.update(group, version, "inferenceservices", registry=registry)
    async def service_applied(body: Any, **_: Any) -> None:
        await controller.applied(_plain(body))

    @kopf.timer(group, version, "inferenceservices", interval=tick_seconds, registry=registry)
    async def service_tick(body: Any, **_: Any) -> None:
        await controller.tick(_plain(body))

    @kopf.on.delete(group, version, "inferenceservices", optional=True, registry=registry)
    @kopf.on.resume(group, version, "inferencegraphs", registry=registry)
    @kopf.on.create(group, version, "inferencegraphs", registry=registry)
    @kopf.on.update(group, version, "inferencegraphs", registry=registry)
    @kopf.on.delete(group, version, "inferencegraphs", optional=True, registry=registry)
    async def namespace_changed(namespace: str, **_: Any) -> None:
        await controller.changed(namespace)

    return registry


def _plain(body: Any) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(body))


def run_controller(namespace: str | None = None, *, image: str = "turnout:latest",
                   kubeconfig: str | None = None, tick_seconds: float = TICK_SECONDS,
                   retire_seconds: float = 30.0, prometheus_url: str | None = None,
                   config: str | None = None, registry_poll: float = REGISTRY_POLL_SECONDS,
                   stop_flag: Any = None, ready_flag: Any = None) -> None:
    """``turnout controller``: run until stopped (``kopf run --standalone`` style), in one
    namespace or, with ``namespace=None``, cluster-wide."""
    import kopf
    import kubernetes

    if kubeconfig is not None:
        kubernetes.config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
    settings = Settings(namespace=namespace or "", image=image)
    if config:  # the chart's runtime settings; explicit flags below still win
        from pathlib import Path

        from serving.control.kube.config import load

        settings = load(Path(config), settings)
    if prometheus_url:
        settings = Settings(**{**settings.__dict__, "prometheus_url": prometheus_url})
    controller = Controller(Kube(kubernetes.client.ApiClient()), settings,
                            retire_seconds=retire_seconds, registry_poll=registry_poll)
    registry = register(controller, tick_seconds=tick_seconds)
    kopf.run(registry=registry, standalone=True, clusterwide=namespace is None,
             namespaces=[namespace] if namespace else (), stop_flag=stop_flag,
             ready_flag=ready_flag)
