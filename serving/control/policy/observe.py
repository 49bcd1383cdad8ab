"""Reading the router's Prometheus text into per-variant totals, and windows between two reads.

Pure functions of the scraped text: the control loop scrapes ``/metrics`` once per tick and
keeps the totals it took when a rollout step began (in the service's serialised state); the
difference is what the canary did during the step. A counter that went down means the router
restarted: as Prometheus's ``increase()`` does, the new value is then the whole increase, never
a negative count. Latency quantiles come from histogram buckets the way Prometheus's
``histogram_quantile`` computes them (linear within the bucket).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

_GRPC_ERRORS = frozenset({"INTERNAL", "UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED", "DATA_LOSS",
                          "StatusCode.INTERNAL", "StatusCode.UNAVAILABLE", "StatusCode.UNKNOWN",
                          "StatusCode.DEADLINE_EXCEEDED", "StatusCode.DATA_LOSS"})


@dataclass(frozen=True)
class VariantWindow:
    """What one variant did during the interval under analysis (deltas, not totals)."""

    requests: int = 0
    errors: int = 0            # answers with status >= 500 (a 4xx is the client's fault)
    p99_seconds: float | None = None
    compared: int = 0          # mirrored class outputs compared with the stable answer
    agreed: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Totals(BaseModel):
    """Cumulative counters of one (service, variant) as the router reports them."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = Field(default_factory=dict)  # le -> cumulative count
    compared: float = 0.0
    agreed: float = 0.0

    def reset_since(self, then: Totals) -> bool:
        """Whether any counter went down since ``then``: the router restarted in between."""
        return (self.requests < then.requests or self.errors < then.errors
                or self.compared < then.compared or self.agreed < then.agreed
                or any(c < then.buckets.get(le, 0.0) for le, c in self.buckets.items()))


def is_error(code: str) -> bool:
    return code.startswith("5") or code in _GRPC_ERRORS


def parse_router_metrics(text: str) -> dict[tuple[str, str], Totals]:
    out: dict[tuple[str, str], Totals] = {}

    def get(labels: dict[str, str]) -> Totals:
        return out.setdefault((labels.get("service", ""), labels.get("variant", "")), Totals())

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "turnout_router_requests_total":
                t = get(labels)
                t.requests += value
                if is_error(labels.get("code", "")):
                    t.errors += value
            elif name == "turnout_router_request_duration_seconds_bucket":
                t = get(labels)
                le = float(labels["le"])
                t.buckets[le] = t.buckets.get(le, 0.0) + value
            elif name == "turnout_router_shadow_compared_elements_total" \
                    and labels.get("kind") == "class":
                get(labels).compared += value
            elif name == "turnout_router_shadow_agreed_elements_total":
                get(labels).agreed += value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``le -> count`` buckets; None without observations."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # beyond the last finite bucket: its bound is all we know
            span = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / span if span else 1.0)
        lower_le, lower_count = le, count
    return lower_le


def window(now: Totals | None, then: Totals | None) -> VariantWindow:
    """What happened between two reads of one variant's totals (a reset counts from zero)."""
    now = now or Totals()
    then = then or Totals()
    if now.reset_since(then):
        then = Totals()
    buckets = {le: c - then.buckets.get(le, 0.0) for le, c in now.buckets.items()}
    return VariantWindow(requests=int(now.requests - then.requests),
                         errors=int(now.errors - then.errors),
                         p99_seconds=quantile(0.99, buckets),
                         compared=int(now.compared - then.compared),
                         agreed=int(now.agreed - then.agreed))
