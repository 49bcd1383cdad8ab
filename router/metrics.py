"""Router metrics through one object given its registry (tests pass a fresh one).

Label values come only from the routes file (services, variants, endpoints, graph nodes) or
from fixed sets, so clients cannot mint new series: an unknown service is counted as ``""``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.transport.accumulate import Deferred, FlushBeforeCollect

_LATENCY = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        registry.register(FlushBeforeCollect(self.flush))  # first: expositions see current values
        requests = Counter(
            "turnout_router_requests_total", "Client requests by where they were routed",
            ["service", "variant", "protocol", "code"], registry=registry)
        duration = Histogram(
            "turnout_router_request_duration_seconds", "Client request latency through the router",
            ["service", "variant", "protocol"], buckets=_LATENCY, registry=registry)
        upstream = Counter(
            "turnout_router_upstream_requests_total", "Attempts sent to upstream endpoints",
            ["service", "variant", "endpoint", "outcome"], registry=registry)
        upstream_duration = Histogram(
            "turnout_router_upstream_duration_seconds", "One attempt's latency at an endpoint",
            ["service", "variant", "endpoint"], buckets=_LATENCY, registry=registry)
        self.retries = Counter(
            "turnout_router_retries_total", "Attempts repeated on another endpoint",
            ["service", "variant"], registry=registry)
        self.retry_budget_exhausted = Counter(
            "turnout_router_retry_budget_exhausted_total", "Retries refused by the budget",
            ["service", "variant"], registry=registry)
        self.ejections = Counter(
            "turnout_router_ejections_total", "Endpoints taken out by passive outlier detection",
            ["service", "variant", "endpoint"], registry=registry)
        self.endpoint_healthy = Gauge(
            "turnout_router_endpoint_healthy", "1 when the active health check passes",
            ["service", "variant", "endpoint"], registry=registry)
        self.rejected = Counter(
            "turnout_router_overload_rejections_total", "Requests refused at the pending cap",
            ["service", "variant"], registry=registry)
        self.shadow = Counter(
            "turnout_router_shadow_requests_total", "Mirrored copies by outcome "
            "(sent, dropped, error, compared)", ["service", "variant", "outcome"], registry=registry)
        self.shadow_compared = Counter(
            "turnout_router_shadow_compared_elements_total", "Output elements compared with the "
            "primary; kind is class (exact match) or numeric", ["service", "variant", "kind"],
            registry=registry)
        self.shadow_agreed = Counter(
            "turnout_router_shadow_agreed_elements_total", "Class outputs equal to the primary's; "
            "agreement rate = agreed / compared{kind=class}", ["service", "variant"],
            registry=registry)
        self.shadow_abs_diff = Counter(
            "turnout_router_shadow_abs_difference_total", "Sum of |shadow - primary| over numeric "
            "elements; mean = this / compared{kind=numeric}", ["service", "variant"],
            registry=registry)
        self.graph_requests = Counter(
            "turnout_router_graph_requests_total",
            "Graph runs by outcome: success, step_failed (a failed step's answer is the graph's) "
            "or the router's error kind (e.g. timeout)", ["graph", "outcome"], registry=registry)
        self.graph_duration = Histogram(
            "turnout_router_graph_duration_seconds", "Latency of one whole graph run",
            ["graph"], buckets=_LATENCY, registry=registry)
        self.graph_steps = Counter(
            "turnout_router_graph_steps_total", "Graph steps by outcome",
            ["graph", "node", "step", "outcome"], registry=registry)
        self.graph_step_duration = Histogram(
            "turnout_router_graph_step_duration_seconds", "Latency of one graph step",
            ["graph", "node", "step"], buckets=_LATENCY, registry=registry)
        self.held = Gauge(
            "turnout_router_held_requests", "Requests waiting now for a ready endpoint of their "
            "variant (upstream.hold_seconds): the demand that scales a variant from zero",
            ["service", "variant"], registry=registry)
        self.held_total = Counter(
            "turnout_router_held_total", "Held requests by how their wait ended: released (an "
            "endpoint became ready, or the routes changed), timeout (hold_seconds passed), "
            "overflow (refused at once: max_held, or the gRPC edge's share of threads), "
            "cancelled (the client went away)", ["service", "variant", "outcome"],
            registry=registry)
        self.reloads = Counter(
            "turnout_router_config_reloads_total", "Config applications by result",
            ["result"], registry=registry)
        # The four metrics every request updates count in plain numbers per thread and reach
        # prometheus-client at each exposition (serving/accumulate.py): their locked updates
        # were several % of the router's CPU per request.
        self._deferred = [Deferred(m) for m in (requests, duration, upstream, upstream_duration)]
        self.requests, self.duration, self.upstream, self.upstream_duration = self._deferred

    def flush(self) -> None:
        """Move the hot metrics' accumulators into prometheus-client (done before exposition)."""
        for metric in self._deferred:
            metric.flush()
