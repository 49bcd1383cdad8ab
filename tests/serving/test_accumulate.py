"""Deferred labelled metrics (serving/accumulate.py, used by the router): what threads count in
plain numbers must reach prometheus-client exactly, at every exposition."""

from __future__ import annotations

import random
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serving.transport.accumulate import Deferred, FlushBeforeCollect

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _registry_with(*metrics_of) -> tuple[CollectorRegistry, list[Deferred]]:
    registry = CollectorRegistry()
    deferred: list[Deferred] = []
    registry.register(FlushBeforeCollect(lambda: [d.flush() for d in deferred]))
    for make in metrics_of:
        deferred.append(Deferred(make(registry)))
    return registry, deferred


def test_deferred_histogram_and_counter_equal_direct_updates_after_each_exposition():
    registry, (hist, count) = _registry_with(
        lambda r: Histogram("lat_seconds", "t", ["svc"], buckets=BUCKETS, registry=r),
        lambda r: Counter("calls", "c", ["svc", "code"], registry=r))
    direct = CollectorRegistry()
    ref_hist = Histogram("lat_seconds", "t", ["svc"], buckets=BUCKETS, registry=direct)
    ref_count = Counter("calls", "c", ["svc", "code"], registry=direct)
    rng = random.Random(3)
    for i in range(400):
        seconds = rng.choice([0.001, 0.5, 3.0]) if i % 7 == 0 else rng.expovariate(100)
        hist.labels("a").observe(seconds)
        ref_hist.labels("a").observe(seconds)
        code = rng.choice(["200", "503"])
        count.labels("a", code).inc()
        ref_count.labels("a", code).inc()
        if i % 91 == 0:
            assert _samples(registry) == pytest.approx(_samples(direct))
    count.labels("a", "200").inc(2.5)
    ref_count.labels("a", "200").inc(2.5)
    got, expected = _samples(registry), _samples(direct)
    assert got == pytest.approx(expected) and len(expected) == len(BUCKETS) + 3 + 2


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """Every sample but the creation times (the two registries were made apart)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples
            if not s.name.endswith("_created")}


def test_threads_counting_while_expositions_run_lose_nothing():
    registry, (count,) = _registry_with(lambda r: Counter("calls", "c", ["svc"], registry=r))
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            generate_latest(registry)

    def work() -> None:
        for _ in range(20000):
            count.labels("m").inc()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=work) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    scraper.join()
    assert registry.get_sample_value("calls_total", {"svc": "m"}) == 80000


def test_label_values_are_checked_when_first_used():
    _, (count,) = _registry_with(lambda r: Counter("calls", "c", ["svc", "code"], registry=r))
    with pytest.raises(ValueError):
        count.labels("only-one")
