"""Request metrics are counted in plain ints and flushed into prometheus-client: the exposed
values must equal what observing each request directly would have produced."""

from __future__ import annotations

import random
import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from serving.server.metrics import LATENCY_BUCKETS, Metrics


def test_flushed_histogram_matches_direct_observation():
    """Pins the prometheus-client layout flush relies on (per-bucket values and _sum)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    reference = Histogram("reference_seconds", "direct", ["model", "version", "protocol"],
                          buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    rng = random.Random(7)
    record = metrics.for_request("iris", "1", "rest")
    for i in range(500):
        seconds = rng.choice([0.0001, 0.00025, 1.0, 10.0, 20.0]) if i % 5 == 0 else \
            rng.expovariate(1 / 0.003)
        record.begin()
        record.end("success", seconds)
        reference.labels("iris", "1", "rest").observe(seconds)
        if i % 97 == 0:
            metrics.flush()  # several partial flushes add up
    expected = _by_suffix(reference.collect(), "reference_seconds")
    got = _by_suffix(registry.collect(), "turnout_request_duration_seconds")
    assert len(expected) == len(LATENCY_BUCKETS) + 3  # buckets, +Inf, _count, _sum
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-9, key
    assert registry.get_sample_value("turnout_requests_total", {
        "model": "iris", "version": "1", "protocol": "rest", "status": "success"}) == 500


def _by_suffix(families, prefix: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in families:
        for s in family.samples:
            if s.name.startswith(prefix) and not s.name.endswith("_created"):
                out[(s.name[len(prefix):], tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_flushes_and_counts_in_flight():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    record = metrics.for_request("mlp", "1", "grpc")
    for _ in range(3):
        record.begin()
    record.end("success", 0.001)
    record.end("invalid_argument", 0.002)
    text = generate_latest(registry).decode()
    assert 'turnout_requests_in_flight{model="mlp",protocol="grpc"} 1.0' in text
    assert registry.get_sample_value("turnout_requests_total", {
        "model": "mlp", "version": "1", "protocol": "grpc", "status": "invalid_argument"}) == 1
    assert registry.get_sample_value("turnout_request_duration_seconds_count", {
        "model": "mlp", "version": "1", "protocol": "grpc"}) == 2
    record.end("success", 0.001)
    assert registry.get_sample_value("turnout_requests_in_flight",
                                     {"model": "mlp", "protocol": "grpc"}) == 0
    assert registry.get_sample_value("turnout_requests_total", {
        "model": "mlp", "version": "1", "protocol": "grpc", "status": "success"}) == 2


def test_refused_requests_are_counted_but_never_in_flight():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.for_request("", "", "rest").refused("not_found", 0.0001)
    assert registry.get_sample_value("turnout_requests_total", {
        "model": "", "version": "", "protocol": "rest", "status": "not_found"}) == 1
    assert registry.get_sample_value("turnout_requests_in_flight",
                                     {"model": "", "protocol": "rest"}) is None


def test_threads_counting_while_another_flushes_lose_nothing():
    """Each thread writes its own accumulator; a concurrent flush must neither lose nor double
    count, and in flight never reads below zero."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    per_thread, threads_n = 20_000, 4
    stop = threading.Event()
    lowest = [0.0]

    def work() -> None:
        for _ in range(per_thread):
            record = metrics.for_request("iris", "1", "grpc")
            record.begin()
            record.end("success", 0.0005)

    def flush() -> None:
        while not stop.is_set():
            metrics.flush()
            value = registry.get_sample_value("turnout_requests_in_flight",
                                              {"model": "iris", "protocol": "grpc"}) or 0.0
            lowest[0] = min(lowest[0], value)

    flusher = threading.Thread(target=flush)
    flusher.start()
    workers = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    flusher.join()
    labels = {"model": "iris", "version": "1", "protocol": "grpc"}
    assert registry.get_sample_value("turnout_requests_total", {**labels, "status": "success"}) \
        == per_thread * threads_n
    assert registry.get_sample_value("turnout_request_duration_seconds_count", labels) \
        == per_thread * threads_n
    assert registry.get_sample_value("turnout_request_duration_seconds_bucket",
                                     {**labels, "le": "0.0005"}) == per_thread * threads_n
    assert lowest[0] >= 0


def test_batcher_metrics_flush_to_what_direct_observation_gives():
    """Batch sizes and queue waits are counted per batch on the loop and flushed like request
    metrics: the exposition equals observing every batch and wait directly."""
    from serving.server.metrics import BATCH_BUCKETS

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    sizes = Histogram("ref_rows", "direct", buckets=BATCH_BUCKETS, registry=CollectorRegistry())
    waits = Histogram("ref_seconds", "direct", buckets=LATENCY_BUCKETS,
                      registry=CollectorRegistry())
    rng = random.Random(3)
    batcher = metrics.for_batcher("mlp", "2")
    assert metrics.for_batcher("mlp", "2") is batcher
    for i in range(200):
        rows = rng.choice([1, 2, 3, 64, 65, 1024, 2000])
        queued = [rng.expovariate(1 / 0.002) for _ in range(rng.randint(1, 5))]
        batcher.observe(rows, queued)
        sizes.observe(rows)
        for seconds in queued:
            waits.observe(seconds)
        if i % 41 == 0:
            metrics.flush()
    text = generate_latest(registry).decode()  # an exposition flushes first
    labels = {"model": "mlp", "version": "2"}
    for ours, reference, name in (("turnout_batch_size_rows", sizes, "ref_rows"),
                                  ("turnout_batch_queue_seconds", waits, "ref_seconds")):
        expected = {(s.name[len(name):], s.labels.get("le")): s.value
                    for f in reference.collect() for s in f.samples
                    if not s.name.endswith("_created")}
        for (suffix, le), value in expected.items():
            got = registry.get_sample_value(ours + suffix, {**labels, **({"le": le} if le else {})})
            assert got is not None and abs(got - value) < 1e-9, (ours, suffix, le)
    assert 'turnout_batch_size_rows_count{model="mlp",version="2"} 200.0' in text
