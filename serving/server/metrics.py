"""Prometheus metrics for the model server, all held by one object built on an injected registry.

Tests give it a fresh ``CollectorRegistry``; the server gives it the process registry, or, with
several worker processes, a registry collected through prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``), which is why every gauge declares a ``multiprocess_mode``.
"""

from __future__ import annotations

import threading
from threading import get_ident

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.transport.accumulate import Buckets, FlushBeforeCollect

# Serving latencies live between tens of microseconds and seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class RequestMetrics:
    """The request metrics of one (model, version, protocol), as used by one thread.

    Updating a prometheus-client child takes a lock and several Python calls per value; seven
    such updates per request cost more than decoding a small model's request. So the hot path
    only bumps plain ints here, and :meth:`Metrics.flush` moves the differences into the
    prometheus metrics before every exposition (and periodically, for worker processes). Each
    instance is written by one thread only (the key includes the thread), and every field only
    grows, so a flush running in another thread never loses an update.
    """

    __slots__ = ("key", "started", "finished", "by_status", "latency", "inference",
                 "_flushed_status")

    def __init__(self, key: tuple[str, str, str]) -> None:
        self.key = key
        self.started = 0
        self.finished = 0
        self.by_status: dict[str, int] = {}
        self._flushed_status: dict[str, int] = {}
        self.latency = Buckets(LATENCY_BUCKETS)
        self.inference = Buckets(LATENCY_BUCKETS)

    def begin(self) -> None:
        self.started += 1

    def end(self, status: str, seconds: float) -> None:
        """One request finished (after :meth:`begin`) with ``status``, ``seconds`` after it began."""
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        self.latency.observe(seconds)
        self.finished += 1

    def refused(self, status: str, seconds: float) -> None:
        """A request that never began (unknown model): counted, timed, never in flight."""
        self.started += 1
        self.end(status, seconds)


class BatchMetrics:
    """The adaptive batcher's metrics of one model version, counted on the event loop (one
    thread) and moved into prometheus by :meth:`Metrics.flush`, as :class:`RequestMetrics` are:
    a per-request ``observe`` of the queue wait cost a lock and a handful of calls each."""

    __slots__ = ("key", "sizes", "waits")

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.sizes = Buckets(BATCH_BUCKETS)
        self.waits = Buckets(LATENCY_BUCKETS)

    def observe(self, rows: int, waits: list[float]) -> None:
        """One merged batch of ``rows`` rows, and each of its requests' seconds in the queue."""
        self.sizes.observe(rows)
        observe = self.waits.observe
        for waited in waits:
            observe(waited)


class Metrics:
    """Every metric the model server exports; labels are model, version, protocol, status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._per_request: dict[tuple[str, str, str, int], RequestMetrics] = {}
        self._per_batcher: dict[tuple[str, str], BatchMetrics] = {}
        self._flush_lock = threading.Lock()
        # First in the registry, so an exposition flushes before it reads the metrics below.
        registry.register(FlushBeforeCollect(self.flush))
        self.requests = Counter(
            "turnout_requests", "Inference requests by outcome (status is 'success' or an error kind)",
            ["model", "version", "protocol", "status"], registry=registry)
        self.request_latency = Histogram(
            "turnout_request_duration_seconds",
            "Time from a decoded request to its response, including queueing and encoding",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=registry)
        self.inference_latency = Histogram(
            "turnout_inference_duration_seconds", "Time spent in the runtime's predict alone",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "turnout_requests_in_flight", "Inference requests being processed now",
            ["model", "protocol"], registry=registry, multiprocess_mode="livesum")
        self.load_duration = Histogram(
            "turnout_model_load_duration_seconds", "Time to load one model version",
            ["model", "version"], buckets=LOAD_BUCKETS, registry=registry)
        self.model_ready = Gauge(
            "turnout_model_ready", "1 when the model version is loaded and ready, else 0",
            ["model", "version"], registry=registry, multiprocess_mode="livemax")
        self.models_loaded = Gauge(
            "turnout_models_loaded", "Model versions currently loaded (ready)",
            registry=registry, multiprocess_mode="livemax")
        self.batch_size = Histogram(
            "turnout_batch_size_rows", "Rows in each merged predict call of the adaptive batcher",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=registry)
        self.batch_queue_time = Histogram(
            "turnout_batch_queue_seconds", "Time a request waited in the batching queue",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)

    def for_request(self, model: str, version: str, protocol: str) -> RequestMetrics:
        """The calling thread's accumulator for these labels."""
        key = (model, version, protocol, get_ident())
        found = self._per_request.get(key)
        if found is None:
            found = RequestMetrics(key[:3])
            with self._flush_lock:  # flush iterates the table
                self._per_request[key] = found
        return found

    def for_batcher(self, model: str, version: str) -> BatchMetrics:
        """The accumulator of one model version's batcher (written by the event loop only)."""
        found = self._per_batcher.get((model, version))
        if found is None:
            found = BatchMetrics((model, version))
            with self._flush_lock:
                self._per_batcher[model, version] = found
        return found

    def flush(self) -> None:
        """Move what the accumulators counted since the last flush into the prometheus metrics."""
        with self._flush_lock:
            in_flight: dict[tuple[str, str], int] = {}
            for record in self._per_request.values():
                model, version, protocol = record.key
                finished = record.finished  # read before started: the difference is never < 0
                in_flight[model, protocol] = (in_flight.get((model, protocol), 0)
                                              + record.started - finished)
                flushed = record._flushed_status
                for status, count in list(record.by_status.items()):
                    if count != flushed.get(status, 0):
                        self.requests.labels(model, version, protocol, status).inc(
                            count - flushed.get(status, 0))
                        flushed[status] = count
                record.latency.flush_into(self.request_latency.labels(model, version, protocol))
                record.inference.flush_into(self.inference_latency.labels(model, version))
            for batcher in self._per_batcher.values():
                batcher.sizes.flush_into(self.batch_size.labels(*batcher.key))
                batcher.waits.flush_into(self.batch_queue_time.labels(*batcher.key))
            for (model, protocol), count in in_flight.items():
                if model:  # unknown models are never in flight
                    self.in_flight.labels(model, protocol).set(count)
