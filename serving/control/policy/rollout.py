"""Rollout analysis: from one interval's canary and stable metrics to advance, hold or roll back.

A pure function of its arguments, so the local supervisor and a Kubernetes controller make the
same decision from the same numbers, and tests state every case as a row of a table.
Checks run in a fixed order and the first failure is the reason recorded, so an operator reads
one concrete cause ("error rate 0.31 > 0.05") rather than a score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.spec.turnout import Analysis

Action = Literal["advance", "promote", "hold", "rollback"]


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


@dataclass(frozen=True)
class Verdict:
    action: Action
    percent: int               # the canary's share after the decision
    reason: str


def analyse(*, analysis: Analysis, steps: list[int], percent: int, holds: int,
            canary: VariantWindow, stable: VariantWindow) -> Verdict:
    """Decide the next step of a rollout whose canary now has ``percent`` of the traffic.

    ``holds`` counts the consecutive intervals already held for lack of data; after
    ``analysis.maxHolds`` of them the rollout rolls back rather than wait forever.
    """
    if canary.requests < analysis.minRequests:
        if holds + 1 >= analysis.maxHolds:
            return Verdict("rollback", 0, f"only {canary.requests} canary requests in the last "
                           f"interval after {holds + 1} intervals (need {analysis.minRequests})")
        return Verdict("hold", percent, f"{canary.requests} canary requests, need "
                       f"{analysis.minRequests}")
    failure = _first_failure(analysis, canary, stable)
    if failure is not None:
        return Verdict("rollback", 0, failure)
    if analysis.minAgreement is not None and canary.compared == 0:
        return _hold_or_give_up(analysis, holds, percent, "no mirrored comparisons yet")
    later = [s for s in steps if s > percent]
    if not later or later[0] >= 100:
        return Verdict("promote", 100, _passed(canary, stable))
    return Verdict("advance", later[0], _passed(canary, stable))


def _first_failure(a: Analysis, canary: VariantWindow, stable: VariantWindow) -> str | None:
    rate = canary.error_rate
    if a.maxErrorRate is not None and rate > a.maxErrorRate:
        return f"canary error rate {rate:.3f} > {a.maxErrorRate} ({canary.errors}/{canary.requests})"
    if a.maxErrorRateIncrease is not None and stable.requests:
        if rate - stable.error_rate > a.maxErrorRateIncrease:
            return (f"canary error rate {rate:.3f} exceeds stable's {stable.error_rate:.3f} by "
                    f"more than {a.maxErrorRateIncrease}")
    p99 = canary.p99_seconds
    if p99 is not None and a.maxP99Seconds is not None and p99 > a.maxP99Seconds:
        return f"canary p99 {p99 * 1000:.1f} ms > {a.maxP99Seconds * 1000:.1f} ms"
    if p99 is not None and stable.p99_seconds is not None and a.maxP99Ratio is not None:
        ratio = max(p99, a.p99FloorSeconds) / max(stable.p99_seconds, a.p99FloorSeconds)
        if ratio > a.maxP99Ratio:
            return (f"canary p99 {p99 * 1000:.1f} ms is {ratio:.2f}x stable's "
                    f"{stable.p99_seconds * 1000:.1f} ms (limit {a.maxP99Ratio}x)")
    if a.minAgreement is not None and canary.compared:
        agreement = canary.agreed / canary.compared
        if agreement < a.minAgreement:
            return f"canary agrees with stable on {agreement:.3f} of outputs < {a.minAgreement}"
    return None


def _hold_or_give_up(a: Analysis, holds: int, percent: int, why: str) -> Verdict:
    if holds + 1 >= a.maxHolds:
        return Verdict("rollback", 0, f"{why} after {holds + 1} intervals")
    return Verdict("hold", percent, why)


def _passed(canary: VariantWindow, stable: VariantWindow) -> str:
    p99 = f", p99 {canary.p99_seconds * 1000:.1f} ms" if canary.p99_seconds is not None else ""
    return (f"analysis passed: {canary.requests} requests, error rate {canary.error_rate:.3f}"
            f"{p99} (stable {stable.error_rate:.3f})")
