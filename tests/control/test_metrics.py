"""Rollout events and plane state as Prometheus metrics, on a fresh registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from serving.control.local.metrics import ROLLOUT_EVENTS, PlaneMetrics
from serving.control.policy.revisions import (
    MAX_EVENTS,
    Revision,
    ServiceState,
    new_events,
    record_event,
    rollback,
    set_step,
    start_canary,
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_new_events_are_exactly_those_recorded_since_even_past_the_cap() -> None:
    s = ServiceState(name="iris", stable="iris-00001")
    assert new_events(None, s) == []
    s1 = record_event(s, 1, "created", "a")
    assert [e.kind for e in new_events(None, s1)] == ["created"]
    s2 = s1
    for i in range(MAX_EVENTS + 5):
        s2 = record_event(s2, 2 + i, "held", f"h{i}")
    fresh = new_events(s1, s2)
    assert len(fresh) == MAX_EVENTS and fresh[-1].message == f"h{MAX_EVENTS + 4}"
    assert new_events(s2, s2) == []


def test_rollout_events_are_counted_by_kind_from_zero() -> None:
    registry = CollectorRegistry()
    metrics = PlaneMetrics(registry)
    revisions = {f"iris-0000{n}": Revision(name=f"iris-0000{n}", number=n, digest=str(n),
                                           storage_uri=f"/m/{n}", model_format="sklearn")
                 for n in (1, 2)}
    before = record_event(ServiceState(name="iris", stable="iris-00001", revisions=revisions), 1,
                          "created", "c")
    metrics.record("iris", new_events(None, before))
    assert {k: value(registry, "turnout_rollout_events_total", service="iris", event=k)
            for k in ROLLOUT_EVENTS} == {k: 1.0 if k == "created" else 0.0 for k in ROLLOUT_EVENTS}
    s = start_canary(before, "iris-00002", 10, now=2, phase="progressing")
    s = set_step(s, 50, now=3, reason="passed")
    s = rollback(s, now=4, reason="errors")
    s = record_event(s, 5, "scaled", "iris-00001: replicas 1 -> 0")  # not a rollout event
    metrics.record("iris", new_events(before, s))
    got = {k: value(registry, "turnout_rollout_events_total", service="iris", event=k)
           for k in ("started", "step", "rolled_back", "promoted")}
    assert got == {"started": 1.0, "step": 1.0, "rolled_back": 1.0, "promoted": 0.0}
    assert value(registry, "turnout_rollout_events_total", service="iris", event="scaled") is None


def test_gauges_are_read_from_the_status_document_at_each_scrape() -> None:
    doc: dict[str, Any] = {"services": [{
        "name": "iris", "phase": "canary", "canary_percent": 25,
        "variants": [
            {"role": "stable", "revision": "iris-00001",
             "replicas": {"ready": 2, "total": 2, "desired": 3, "restarts": 0}},
            {"role": "canary", "revision": "iris-00002",
             "replicas": {"ready": 0, "total": 1, "desired": None, "restarts": 0}}]}]}
    registry = CollectorRegistry()
    PlaneMetrics(registry).watch(lambda: doc)
    assert value(registry, "turnout_rollout_canary_percent", service="iris") == 25
    assert value(registry, "turnout_rollout_phase", service="iris", phase="canary") == 1
    assert value(registry, "turnout_rollout_phase", service="iris", phase="stable") == 0
    stable = {"service": "iris", "revision": "iris-00001", "role": "stable"}
    assert value(registry, "turnout_replicas", **stable, state="desired") == 3
    assert value(registry, "turnout_replicas", **stable, state="ready") == 2
    canary = {"service": "iris", "revision": "iris-00002", "role": "canary"}
    assert value(registry, "turnout_replicas", **canary, state="desired") is None  # not decided
    assert value(registry, "turnout_replicas", **canary, state="ready") == 0
    doc["services"][0].update(phase="rolled-back", canary_percent=0,
                              variants=doc["services"][0]["variants"][:1])
    assert value(registry, "turnout_rollout_canary_percent", service="iris") == 0
    assert value(registry, "turnout_replicas", **canary, state="ready") is None  # no stale series
