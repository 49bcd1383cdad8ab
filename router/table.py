"""The routing table: one immutable snapshot of the config with live pools attached.

A request reads ``router.table`` once and uses that snapshot to the end, so swapping in a new
table (reload) is a single assignment and never changes the routing of a request in flight.
Endpoint state and pending counters are carried over from the previous table for every
(service, variant, address) that stays, so a reload neither forgets an ejection nor resets
the pending cap while old requests still hold slots.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from router.balance import Clock, Endpoint, Pool, RetryBudget
from router.decide import choose_variant, parse_cookies
from serving.protocol.errors import ModelNotFound, Overloaded
from serving.spec.routes import Graph, Mirror, RouterConfig, Service, Upstream, Variant


@dataclass(eq=False)
class Gate:
    """Pending requests of one variant, capped: over the cap the router answers 429 at once.

    Locked: the event loop (REST, graphs) and the gRPC edge's threads share it.
    """

    limit: int
    pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self, what: str) -> None:
        with self._lock:
            if self.pending >= self.limit:
                raise Overloaded(f"{what} has {self.pending} requests pending; "
                                 f"the limit is {self.limit}")
            self.pending += 1

    def leave(self) -> None:
        with self._lock:
            self.pending -= 1


@dataclass(eq=False)
class VariantRoute:
    service: str
    spec: Variant
    http: Pool
    grpc: Pool
    gate: Gate
    budget: RetryBudget

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> str:
        return self.spec.model or self.service

    @property
    def renamed(self) -> bool:
        """Whether the upstream model name differs, so responses need the service name back."""
        return self.model != self.service


@dataclass(eq=False)
class ServiceRoute:
    spec: Service
    upstream: Upstream
    variants: dict[str, VariantRoute]
    weights: list[tuple[str, float]]
    mirrors: list[tuple[Mirror, VariantRoute]]

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(eq=False)
class RoutingTable:
    config: RouterConfig
    services: dict[str, ServiceRoute]
    graphs: dict[str, Graph]
    rng: random.Random = field(default_factory=random.Random)

    def service(self, name: str) -> ServiceRoute:
        route = self.services.get(name)
        if route is None:
            raise ModelNotFound(f"model '{name}' is not found")
        return route

    def pick(self, service: ServiceRoute, headers: Mapping[str, str]) -> tuple[VariantRoute, str]:
        """The variant for a request given its lower-case headers; returns it and the reason."""
        spec = service.spec
        cookies = parse_cookies(headers.get("cookie")) if _needs_cookies(spec) else {}
        sticky_key = None
        if spec.sticky is not None:
            sticky_key = (headers.get(spec.sticky.header) if spec.sticky.header
                          else cookies.get(spec.sticky.cookie or ""))
        name, reason = choose_variant(rules=spec.rules, weights=service.weights, headers=headers,
                                      cookies=cookies, sticky_key=sticky_key, draw=self.rng.random())
        return service.variants[name], reason

    def endpoints(self) -> list[tuple[VariantRoute, str, Endpoint]]:
        """Every (variant, protocol, endpoint), for health checks and the admin status."""
        out = []
        for service in self.services.values():
            for variant in service.variants.values():
                out += [(variant, "http", e) for e in variant.http.endpoints]
                out += [(variant, "grpc", e) for e in variant.grpc.endpoints]
        return out


def _needs_cookies(spec: Service) -> bool:
    return any(r.cookie for r in spec.rules) or (spec.sticky is not None and bool(spec.sticky.cookie))


def build_table(config: RouterConfig, previous: RoutingTable | None = None,
                clock: Clock = time.monotonic) -> RoutingTable:
    """A new table for ``config``, reusing endpoint and gate state from ``previous``."""
    old_endpoints: dict[tuple[str, str, str, str], Endpoint] = {}
    old_gates: dict[tuple[str, str], Gate] = {}
    old_budgets: dict[tuple[str, str], RetryBudget] = {}
    if previous is not None:
        for variant, protocol, endpoint in previous.endpoints():
            old_endpoints[(variant.service, variant.name, protocol, endpoint.address)] = endpoint
        for service in previous.services.values():
            for variant in service.variants.values():
                old_gates[(service.name, variant.name)] = variant.gate
                old_budgets[(service.name, variant.name)] = variant.budget

    services: dict[str, ServiceRoute] = {}
    for spec in config.services:
        upstream = config.upstream_for(spec)
        variants: dict[str, VariantRoute] = {}
        for vspec in spec.variants:
            key = (spec.name, vspec.name)

            gate = old_gates.get(key) or Gate(upstream.max_pending)
            gate.limit = upstream.max_pending
            budget = old_budgets.get(key) or RetryBudget(clock=clock)
            budget.ratio = upstream.retry_budget_ratio
            budget.min_per_second = upstream.retry_budget_min_per_second
            http, grpc = (_pool(upstream, clock, [old_endpoints.get((*key, proto, a)) or Endpoint(a)
                                                  for a in addresses])
                          for proto, addresses in (("http", vspec.http), ("grpc", vspec.grpc)))
            variants[vspec.name] = VariantRoute(spec.name, vspec, http, grpc, gate, budget)
        services[spec.name] = ServiceRoute(
            spec, upstream, variants, [(v.name, v.weight) for v in spec.variants],
            [(m, variants[m.variant]) for m in spec.mirror])
    return RoutingTable(config, services, {g.name: g for g in config.graphs})


def _pool(upstream: Upstream, clock: Clock, endpoints: list[Endpoint]) -> Pool:
    return Pool(endpoints, eject_after=upstream.eject_consecutive_failures,
                eject_seconds=upstream.eject_seconds, max_eject_seconds=upstream.max_eject_seconds,
                outlier_interval=upstream.outlier_interval_seconds,
                outlier_min_requests=upstream.outlier_min_requests,
                outlier_min_error_rate=upstream.outlier_min_error_rate,
                outlier_margin=upstream.outlier_margin,
                max_ejected_share=upstream.max_ejected_share,
                clock=clock, checked=upstream.health_check.enabled)
