"""The controller's observer and actuator: Deployments, Services, the router's ConfigMap and
autoscalers through the official ``kubernetes`` client.

:class:`KubeActuator` writes what :mod:`serving.control.kube.render` makes of the plan, and only
what differs: the live object's spec is compared with the rendered one (fields the API server
defaults are left out of the comparison), so a reconcile with nothing changed writes nothing.
Revisions the plan dropped are deleted after the routes stop naming them (``retire_seconds``
later, so the router has read the new routes before their pods drain). An autoscaler owns its
Deployment's ``replicas``: the actuator never writes them back.

:class:`KubeObserver` reads which revisions have ready replicas (their Deployments'
``readyReplicas``) and what the router reports: the source of its Prometheus text and
``/status`` JSON is injectable, so tests feed passing and failing metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity
from prometheus_client.parser import text_string_to_metric_families

from serving.control.kube import render
from serving.control.kube.render import GROUP, MANAGED_BY, Owner, Settings
from serving.control.policy.observe import parse_router_metrics
from serving.control.policy.plan import Desired
from serving.control.policy.ports import Observation, VariantKey
from serving.control.policy.routes import Endpoints
from serving.spec.inferenceservice import InferenceService

log = logging.getLogger("turnout.kube")

RETIRED = f"{GROUP}/retired-at"   # annotation: when a dropped revision left the routes
PLURALS = {"Deployment": "deployments", "Service": "services", "ConfigMap": "configmaps",
           "Pod": "pods", "NetworkPolicy": "networkpolicies",
           "HorizontalPodAutoscaler": "horizontalpodautoscalers",
           "ScaledObject": "scaledobjects", "InferenceService": "inferenceservices",
           "InferenceGraph": "inferencegraphs"}
PREDICTOR_SELECTOR = (f"app.kubernetes.io/managed-by={MANAGED_BY},"
                      "app.kubernetes.io/component in (predictor,transformer)")


class Kube:
    """A small generic REST layer over the official client's ``ApiClient``: any apiVersion and
    kind as plain dicts (the typed APIs of client 30 have no autoscaling/v2beta2, which a 1.20
    server needs). Blocking; callers run it in a thread. Counts its writes."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)

    @staticmethod
    def path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
             sub: str | None = None) -> str:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        parts = [base] + ([f"namespaces/{namespace}"] if namespace else []) + [PLURALS[kind]]
        parts += [name] if name else []
        parts += [sub] if sub else []
        return "/".join(parts)

    def call(self, method: str, path: str, body: Any = None, *, query: list | None = None,
             content_type: str = "application/json") -> Any:
        return self.api.call_api(
            path, method, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            response_type="object", auth_settings=["BearerToken"],
            _return_http_data_only=True, _preload_content=True)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        try:
            return self.call("GET", self.path(api_version, kind, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str,
             selector: str | None = None) -> list[dict]:
        query = [("labelSelector", selector)] if selector else []
        return self.call("GET", self.path(api_version, kind, namespace), query=query)["items"]

    def create(self, obj: dict) -> dict:
        meta = obj["metadata"]
        self.writes.append(("create", obj["kind"], meta["name"]))
        return self.call("POST", self.path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)

    def replace(self, obj: dict) -> dict:
        meta = obj["metadata"]
        self.writes.append(("replace", obj["kind"], meta["name"]))
        return self.call("PUT", self.path(obj["apiVersion"], obj["kind"], meta["namespace"],
                                          meta["name"]), obj)

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict,
              sub: str | None = None) -> dict:
        self.writes.append(("patch" + (f"/{sub}" if sub else ""), kind, name))
        return self.call("PATCH", self.path(api_version, kind, namespace, name, sub), body,
                         content_type="application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.writes.append(("delete", kind, name))
        try:
            self.call("DELETE", self.path(api_version, kind, namespace, name),
                      {"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def served(self, api_version: str) -> bool:
        """Whether the API server offers ``api_version`` (discovery)."""
        try:
            self.call("GET", "/api/v1" if api_version == "v1" else f"/apis/{api_version}")
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise


# -- comparing a rendered object with the live one -----------------------------------------

def matches(rendered: Any, live: Any) -> bool:
    """Whether every field ``rendered`` sets has the same value in ``live`` (the API server's
    defaults are extra fields and do not count). Lists must match item by item; quantities
    compare by value (``0.5`` is ``500m``)."""
    if isinstance(rendered, dict):
        return isinstance(live, dict) and all(k in live and matches(v, live[k])
                                              for k, v in rendered.items())
    if isinstance(rendered, list):
        return isinstance(live, list) and len(rendered) == len(live) and \
            all(matches(a, b) for a, b in zip(rendered, live, strict=True))
    if rendered == live:
        return True
    if isinstance(rendered, str) and isinstance(live, str | int | float):
        try:
            return bool(parse_quantity(rendered) == parse_quantity(live))
        except (ValueError, TypeError):
            return False
    return False


def up_to_date(rendered: dict, live: dict) -> bool:
    meta, live_meta = rendered["metadata"], live.get("metadata", {})
    if RETIRED in (live_meta.get("annotations") or {}):
        return False
    if not matches(meta.get("labels", {}), live_meta.get("labels") or {}):
        return False
    if not matches(meta.get("ownerReferences", []), live_meta.get("ownerReferences") or []):
        return False
    body = "data" if rendered["kind"] == "ConfigMap" else "spec"
    return matches(rendered.get(body, {}), live.get(body, {})) and \
        (body != "data" or set(rendered["data"]) == set(live.get("data") or {}))


def _for_replace(rendered: dict, live: dict) -> dict:
    """The rendered object as a full replacement of ``live``: its resourceVersion, others'
    annotations and finalizers, and what the API server assigned and will not change."""
    live_meta = live["metadata"]
    annotations = {k: v for k, v in (live_meta.get("annotations") or {}).items() if k != RETIRED}
    meta = {**rendered["metadata"], "resourceVersion": live_meta["resourceVersion"],
            "annotations": {**annotations, **rendered["metadata"].get("annotations", {})}}
    if live_meta.get("finalizers"):
        meta["finalizers"] = live_meta["finalizers"]
    out = {**rendered, "metadata": meta}
    if rendered["kind"] == "Service":
        spec = dict(rendered["spec"])
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if key in live.get("spec", {}):
                spec[key] = live["spec"][key]
        out["spec"] = spec
    return out


# -- the actuator --------------------------------------------------------------------------

@dataclass
class KubeActuator:
    """Acts on one namespace. Before :meth:`act`, :attr:`services` names each
    InferenceService of the plan with its owner (the controller sets it every reconcile)."""

    kube: Kube
    settings: Settings
    retire_seconds: float = 30.0
    clock: Callable[[], float] = time.time
    services: Mapping[str, tuple[InferenceService, Owner]] = field(default_factory=dict)
    keda: bool | None = None            # whether ScaledObjects are served (None: ask once)
    skipped: list[str] = field(default_factory=list)  # what could not be written, and why

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    async def act(self, desired: Desired) -> None:
        await asyncio.to_thread(self._act, desired)

    def _act(self, desired: Desired) -> None:
        if self.keda is None:
            self.keda = self.kube.served("keda.sh/v1alpha1")
        objects = render.render(desired, self.services, self.settings)
        scaled = {o["metadata"]["name"] for o in objects
                  if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")}
        skipped = []
        for obj in objects:
            if obj["kind"] == "ScaledObject" and not self.keda:
                skipped.append(f"{obj['metadata']['name']}: no ScaledObject written, KEDA "
                               "(keda.sh/v1alpha1) is not installed; replicas stay as they are")
                continue
            self.apply(obj, keep_replicas=obj["kind"] == "Deployment"
                       and obj["metadata"]["name"] in scaled)
        self.skipped = skipped
        if not self.settings.network_policy:
            self.drop_network_policy()
        self.retire(set(desired.workloads) | {t.name for t in desired.transformers.values()})

    def drop_network_policy(self) -> None:
        """Delete the NetworkPolicies a former configuration had on (the namespace's, which
        carry the router's labels: predictors', transformers')."""
        labels = render.router_labels(self.settings)
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        for policy in self.kube.list("networking.k8s.io/v1", "NetworkPolicy", self.namespace,
                                     selector):
            self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", self.namespace,
                             policy["metadata"]["name"])

    def apply(self, obj: dict, *, keep_replicas: bool = False) -> None:
        """Create ``obj``, or replace the live one if it differs from it."""
        meta = obj["metadata"]
        live = self.kube.get(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if live is None:
            self.kube.create(obj)
            return
        if keep_replicas and "replicas" in live.get("spec", {}):
            obj = {**obj, "spec": {**obj["spec"], "replicas": live["spec"]["replicas"]}}
        if not up_to_date(obj, live):
            self.kube.replace(_for_replace(obj, live))

    def _kinds(self) -> list[tuple[str, str]]:
        kinds = [("apps/v1", "Deployment"), ("v1", "Service"),
                 (self.settings.hpa_api_version, "HorizontalPodAutoscaler")]
        return kinds + ([("keda.sh/v1alpha1", "ScaledObject")] if self.keda else [])

    def retire(self, keep: set[str]) -> None:
        """Delete the objects of revisions not in ``keep``, ``retire_seconds`` after they were
        first found dropped (marked on their Deployment, so a restart keeps the count)."""
        now = self.clock()
        deployments = {d["metadata"]["labels"].get(f"{GROUP}/revision"): d for d in
                       self.kube.list("apps/v1", "Deployment", self.namespace, PREDICTOR_SELECTOR)}
        due = set()
        for revision, deployment in deployments.items():
            if revision in keep or revision is None:
                continue
            since = (deployment["metadata"].get("annotations") or {}).get(RETIRED)
            if self.retire_seconds > 0 and since is None:
                self.kube.patch("apps/v1", "Deployment", self.namespace,
                                deployment["metadata"]["name"],
                                {"metadata": {"annotations": {RETIRED: str(now)}}})
            elif self.retire_seconds <= 0 or now - float(since or now) >= self.retire_seconds:
                due.add(revision)
        for api_version, kind in self._kinds():
            for obj in self.kube.list(api_version, kind, self.namespace, PREDICTOR_SELECTOR):
                revision = obj["metadata"]["labels"].get(f"{GROUP}/revision")
                if revision in due or (revision not in keep and revision not in deployments
                                       and kind != "Deployment"):
                    self.kube.delete(api_version, kind, self.namespace, obj["metadata"]["name"])


# -- the observer --------------------------------------------------------------------------

# What the router says: its Prometheus text and its admin /status JSON (either may be None).
MetricsSource = Callable[[], "tuple[str | None, str | None] | Awaitable[tuple[str | None, str | None]]"]


def router_metrics_source(settings: Settings, timeout: float = 2.0) -> MetricsSource:
    """Read the router's public ``/metrics`` through its Service. Its admin ``/status`` stays
    on the pod's loopback, so held requests come from the metrics and in-flight ones from
    nowhere (the KEDA query reads them from Prometheus). Under the router's TLS: https,
    verified against ``router_ca_file`` (else the system's trust store)."""
    url = f"{render.router_url(settings)}/metrics"
    verify: ssl.SSLContext | bool = ssl.create_default_context(
        cafile=settings.router_ca_file) if settings.router_ca_file else True

    async def source() -> tuple[str | None, str | None]:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=timeout, verify=verify) as client:
                answer = await client.get(url)
            return (answer.text if answer.status_code == 200 else None), None
        except httpx.HTTPError as exc:
            log.debug("router metrics unreadable: %s", exc)
            return None, None

    return source


def held_from_metrics(text: str) -> dict[VariantKey, int]:
    held: dict[VariantKey, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == render.HELD_METRIC:
                key = (sample.labels.get("service", ""), sample.labels.get("variant", ""))
                held[key] = held.get(key, 0) + int(sample.value)
    return held


@dataclass
class KubeObserver:
    """Ready revisions from their Deployments, demand and counters from the router."""

    kube: Kube
    settings: Settings
    metrics: MetricsSource
    replicas: dict[str, int] = field(default_factory=dict)  # revision -> spec.replicas, last seen

    async def observe(self, *, counters: bool) -> Observation:
        deployments = await asyncio.to_thread(
            self.kube.list, "apps/v1", "Deployment", self.settings.namespace, PREDICTOR_SELECTOR)
        endpoints: dict[str, Endpoints] = {}
        replicas: dict[str, int] = {}
        for d in deployments:
            revision = d["metadata"]["labels"].get(f"{GROUP}/revision")
            if revision is None or RETIRED in (d["metadata"].get("annotations") or {}):
                continue
            replicas[revision] = int(d.get("spec", {}).get("replicas", 1))
            if int((d.get("status") or {}).get("readyReplicas") or 0) > 0:
                # a transformer's revision label is its own name (policy/transformers.py)
                host = f"{revision}.{self.settings.namespace}.svc" \
                    if d["metadata"]["labels"].get("app.kubernetes.io/component") == \
                    "transformer" else None
                endpoints[revision] = render.endpoints(revision, self.settings, host=host)
        self.replicas = replicas
        text, status = await self._read()
        in_flight: dict[VariantKey, int] = {}
        held: dict[VariantKey, int] = held_from_metrics(text) if text else {}
        if status:
            for row in json.loads(status).get("endpoints", []):
                key = (row["service"], row["variant"])
                in_flight[key] = in_flight.get(key, 0) + int(row.get("pending", 0))
                held[key] = max(held.get(key, 0), int(row.get("held", 0)))
        totals = parse_router_metrics(text) if counters and text is not None else None
        return Observation(endpoints=endpoints, in_flight=in_flight, held=held, counters=totals)

    async def _read(self) -> tuple[str | None, str | None]:
        try:
            result = self.metrics()
            if inspect.isawaitable(result):
                result = await result
            return result  # type: ignore[return-value]
        except Exception as exc:  # an unreadable router is no reading, never a crash
            log.warning("router metrics unreadable: %s", exc)
            return None, None
