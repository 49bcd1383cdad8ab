"""Prometheus metrics for the model server, all held by one object built on an injected registry.

Tests give it a fresh ``CollectorRegistry``; the server gives it the process registry, or, with
several worker processes, a registry collected through prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``), which is why every gauge declares a ``multiprocess_mode``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Serving latencies live between tens of microseconds and seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class RequestMetrics:
    """The label children one (model, version, protocol) uses, looked up once: ``labels()``
    costs more than the observation itself on the hot path."""

    __slots__ = ("_requests", "_labels", "_by_status", "in_flight", "latency", "inference")

    def __init__(self, metrics: Metrics, model: str, version: str, protocol: str) -> None:
        self._requests = metrics.requests
        self._labels = (model, version, protocol)
        self._by_status: dict[str, Any] = {}
        self.in_flight = metrics.in_flight.labels(model, protocol)
        self.latency = metrics.request_latency.labels(model, version, protocol)
        self.inference = metrics.inference_latency.labels(model, version)

    def count(self, status: str) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(*self._labels, status)
        child.inc()


class Metrics:
    """Every metric the model server exports; labels are model, version, protocol, status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
        self._per_request: dict[tuple[str, str, str], RequestMetrics] = {}

    def for_request(self, model: str, version: str, protocol: str) -> RequestMetrics:
        key = (model, version, protocol)
        found = self._per_request.get(key)
        if found is None:
            found = self._per_request[key] = RequestMetrics(self, model, version, protocol)
        return found
