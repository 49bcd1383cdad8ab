"""The control plane's own metrics: rollout events and the state ``turnout status`` shows.

One object on an injected registry (tests and the plane each pass a fresh one, never the
process-global registry, so two planes in one process cannot collide). Events are counted as
they are recorded; the gauges are read from the same :func:`~serving.control.local.status.status`
document the CLI prints at scrape time, so a scrape can never disagree with ``turnout status``
and a revision that stops serving leaves no stale series behind.

| metric | labels | meaning |
| --- | --- | --- |
| ``turnout_rollout_events_total`` | service, event | events by kind (see ``ROLLOUT_EVENTS``) |
| ``turnout_rollout_canary_percent`` | service | the canary's share of traffic (0: none) |
| ``turnout_rollout_phase`` | service, phase | 1 for the service's current phase |
| ``turnout_replicas`` | service, revision, role, state | ``desired`` and ``ready`` replicas |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.control.policy.revisions import Event, EventKind, Phase

# Autoscaling decisions ("scaled") show in turnout_replicas{state="desired"}, not as rollout events.
ROLLOUT_EVENTS: tuple[str, ...] = tuple(k for k in get_args(EventKind) if k != "scaled")
StatusSource = Callable[[], dict[str, Any]]


class PlaneMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "turnout_rollout_events", "Revision and rollout events recorded, by kind",
            ["service", "event"], registry=registry)
        self._known: set[str] = set()

    def record(self, service: str, events: list[Event]) -> None:
        """Count ``events`` of ``service``; a new service starts every kind at 0 for rate()."""
        if service not in self._known:
            self._known.add(service)
            for kind in ROLLOUT_EVENTS:
                self.events.labels(service, kind)
        for event in events:
            if event.kind in ROLLOUT_EVENTS:
                self.events.labels(service, event.kind).inc()

    def watch(self, source: StatusSource) -> None:
        """Export the gauges from ``source`` (the plane's status document) at every scrape."""
        self.registry.register(_StatusCollector(source))


class _StatusCollector(Collector):
    def __init__(self, source: StatusSource) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        doc = self.source()
        percent = GaugeMetricFamily("turnout_rollout_canary_percent",
                                    "The canary's share of a service's traffic, in percent",
                                    labels=["service"])
        phase = GaugeMetricFamily("turnout_rollout_phase",
                                  "1 for the phase a service is in (stable, canary, progressing, "
                                  "rolled-back)", labels=["service", "phase"])
        replicas = GaugeMetricFamily("turnout_replicas",
                                     "Replicas per serving revision: desired by the autoscaler, "
                                     "ready to take traffic",
                                     labels=["service", "revision", "role", "state"])
        for svc in doc["services"]:
            name = svc["name"]
            percent.add_metric([name], svc["canary_percent"])
            for value in get_args(Phase):
                phase.add_metric([name, value], 1.0 if svc["phase"] == value else 0.0)
            for variant in svc["variants"]:
                labels = [name, variant["revision"], variant["role"]]
                counts = variant["replicas"]
                if counts["desired"] is not None:
                    replicas.add_metric([*labels, "desired"], counts["desired"])
                replicas.add_metric([*labels, "ready"], counts["ready"])
        yield from (percent, phase, replicas)
