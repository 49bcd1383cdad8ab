"""Manifests + revision state + ready endpoints → the router's config.

Pure. Variants are named by role (``stable``, ``canary``) so traffic rules in ``spec.turnout``
keep meaning the same thing as revisions come and go; the revision behind each role is in
``turnout status``. Only ready endpoints are listed (health-gated routing): a role with none is
left out and its share goes to the other, and a role scaled to zero is listed without
endpoints, so the router holds its requests (the activator's job, bounded by
``hold_seconds``) while the autoscaler, seeing them as demand, starts a replica; so is every
role of a service none of whose replicas is ready yet (first start, a restart after a crash). With KServe's
``serving.kserve.io/enable-tag-routing``, ``latest-<name>`` and ``prev-<name>`` are services of
their own that reach the latest and the previous rolled-out revision directly. The result is
validated by the router's own config model, so the control plane cannot hand the router
something it would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from serving.control.policy.revisions import ServiceState
from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService
from serving.spec.routes import PayloadLog, RouterConfig, parse_config


@dataclass(frozen=True)
class Endpoints:
    http: list[str] = field(default_factory=list)
    grpc: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.http or self.grpc)


@dataclass(frozen=True)
class Plan:
    """The routes and what was left out of them, for status and logs."""

    config: RouterConfig
    omitted: list[str]


TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
HOLD_SECONDS = 60.0   # how long the router holds a request for a revision starting from zero


def router_config(*, services: list[tuple[InferenceService, ServiceState]],
                  endpoints: Mapping[str, Endpoints], graphs: list[InferenceGraph],
                  at_zero: frozenset[str] = frozenset(), health_interval: float = 1.0,
                  hold_seconds: float = HOLD_SECONDS, payload_log: str | None = None) -> Plan:
    """Build the routes; ``endpoints`` maps revision name → its ready endpoints.

    ``at_zero``: revisions with no replica on purpose (scaled to zero); they are listed
    without endpoints and the router holds their requests for up to ``hold_seconds``.
    ``payload_log``: where a manifest's ``logger`` without ``url`` sends its events
    (``turnout up``: ``<state folder>/payloads.jsonl``); None leaves such loggers out.
    """
    omitted: list[str] = []
    docs = []
    for isvc, state in services:
        mine = _service(isvc, state, endpoints, at_zero, omitted, hold_seconds, health_interval)
        if mine and isvc.spec.predictor.logger is not None:
            _logger(isvc, mine, payload_log, omitted)
        docs += mine
    names = {d["name"] for d in docs}
    graph_docs = []
    for graph in graphs:
        missing = sorted(_services_of(graph) - names)
        if missing:
            omitted.append(f"graph {graph.name}: services {missing} have no ready variant")
            continue
        graph_docs.append(_graph(graph))
    doc: dict[str, Any] = {"upstream": _upstream(health_interval), "services": docs,
                           "graphs": graph_docs}
    return Plan(parse_config(doc, source="control plane"), omitted)


def _upstream(health_interval: float) -> dict[str, Any]:
    # Every endpoint is a Turnout model server: gRPC clients' calls take the cheaper
    # protobuf-over-HTTP hop (docs/router.md).
    return {"grpc_via_http": True,
            "health_check": {"interval_seconds": health_interval,
                             "timeout_seconds": max(health_interval, 1.0)}}


def _logger(isvc: InferenceService, docs: list[dict[str, Any]], default: str | None,
            omitted: list[str]) -> None:
    """KServe's ``predictor.logger`` on the service's routes (its tags log too, under the
    same ce-inferenceservicename as in KServe); a logger the router could not use is left out
    with the reason, never a plan the router refuses."""
    spec = isvc.spec.predictor.logger
    assert spec is not None
    url = spec.url or default
    if url is None:
        omitted.append(f"{isvc.name}/logger: no url, and no default sink here")
        return
    try:
        logger = PayloadLog(url=url, mode=spec.mode, namespace=isvc.metadata.namespace or "default",
                            inference_service=isvc.name,
                            metadata_headers=list(spec.metadataHeaders or ()))
    except ValidationError as exc:
        omitted.append(f"{isvc.name}/logger: {exc.errors()[0]['msg']}")
        return
    for doc in docs:
        doc["logger"] = logger.model_dump(mode="json")


def tag_routing(isvc: InferenceService) -> bool:
    return isvc.metadata.annotations.get(TAG_ROUTING, "").lower() == "true"


def _service(isvc: InferenceService, state: ServiceState, endpoints: Mapping[str, Endpoints],
             at_zero: frozenset[str], omitted: list[str], hold_seconds: float,
             health_interval: float) -> list[dict[str, Any]]:
    roles = state.serving()
    weights = {"stable": 100 - state.percent if "canary" in roles else 100,
               "canary": state.percent}
    variants = []
    holding = False
    # With no role ready anywhere (scaled to zero, or replicas still starting) every role is
    # listed without endpoints, so requests wait for the first replica instead of a 404.
    none_ready = not any(endpoints.get(revision) for revision in roles.values())
    for role, revision in roles.items():
        ready = endpoints.get(revision) or Endpoints()
        if not ready and revision not in at_zero and not none_ready:
            omitted.append(f"{isvc.name}/{role} ({revision}): no ready replica")
            continue
        holding = holding or not ready
        variants.append({"name": role, "weight": weights[role], "model": isvc.name,
                         "http": ready.http, "grpc": ready.grpc, "revision": revision})
    if not variants:
        return []
    if sum(v["weight"] for v in variants) <= 0:
        for v in variants:
            v["weight"] = 1  # only a 0% canary is left: it serves rather than nobody
    present = {v["name"] for v in variants}
    doc: dict[str, Any] = {"name": isvc.name, "variants": variants}
    extra = isvc.spec.turnout
    if extra is not None:
        doc["rules"] = [r.model_dump(include={"header", "cookie", "variant"}) for r in extra.rules
                        if r.variant in present]
        if extra.sticky is not None:
            doc["sticky"] = extra.sticky.model_dump(include={"header", "cookie"}, exclude_none=True)
        if extra.mirror is not None and {"stable", "canary"} <= present:
            doc["mirror"] = [{"variant": "canary", "percent": extra.mirror.percent,
                              "max_in_flight": extra.mirror.maxInFlight}]
        if extra.auth is not None:
            doc["auth"] = {"principals": list(extra.auth.principals)}
    upstream: dict[str, Any] = {}
    timeout = isvc.spec.predictor.timeout
    if timeout:
        upstream["timeout_seconds"] = float(timeout)
    if holding:
        upstream["hold_seconds"] = hold_seconds
    if upstream:  # a service's upstream replaces the top-level one: start from it
        upstream = doc["upstream"] = {**_upstream(health_interval), **upstream}
    docs = [doc]
    if tag_routing(isvc):
        docs += _tags(isvc, state, variants, upstream)
        if "auth" in doc:  # the tags reach the same revisions: the same principals only
            for tag in docs[1:]:
                tag["auth"] = doc["auth"]
    return docs


def _tags(isvc: InferenceService, state: ServiceState, variants: list[dict[str, Any]],
          upstream: dict[str, Any]) -> list[dict[str, Any]]:
    """KServe's tag routing: ``latest-<name>`` reaches the latest revision, ``prev-<name>``
    the previous rolled-out one, whatever the split, while both serve."""
    by_role = {v["name"]: v for v in variants}
    latest = by_role.get("canary") if state.canary is not None else by_role.get("stable")
    prev = by_role.get("stable") if state.canary is not None else None
    docs = []
    for tag, variant in (("latest", latest), ("prev", prev)):
        if variant is None:
            continue
        doc: dict[str, Any] = {"name": f"{tag}-{isvc.name}", "variants": [
            {**variant, "name": variant["name"], "weight": 100}]}
        if upstream:
            doc["upstream"] = upstream
        docs.append(doc)
    return docs


def _services_of(graph: InferenceGraph) -> set[str]:
    return {s.serviceName for node in graph.spec.nodes.values() for s in node.steps
            if s.serviceName is not None}


def _graph(graph: InferenceGraph) -> dict[str, Any]:
    nodes = {}
    for name, node in graph.spec.nodes.items():
        steps = [step.model_dump(include={"stepName", "serviceName", "nodeName", "data",
                                          "condition", "weight", "dependency"}, exclude_none=True)
                 for step in node.steps]
        nodes[name] = {"routerType": node.routerType, "steps": steps}
    doc: dict[str, Any] = {"name": graph.name, "nodes": nodes}
    if graph.spec.timeout:
        doc["timeout_seconds"] = float(graph.spec.timeout)
    return doc
