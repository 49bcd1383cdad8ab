"""Rollout analysis: from one interval's canary and stable metrics to advance, hold or roll back.

:func:`analyse` decides from one window; :func:`step` is the whole progressive rollout as a
pure transition of the service's serialised state (its interval timing and metric baseline are
part of that state), so ``turnout up`` and a Kubernetes controller make the same decision from
the same numbers, a restarted plane resumes where it was, and tests state every case as a row
of a table.
Checks run in a fixed order and the first failure is the reason recorded, so an operator reads
one concrete cause ("error rate 0.31 > 0.05") rather than a score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.control.policy import revisions as rev
from serving.control.policy.observe import Totals, VariantWindow, window
from serving.spec.turnout import Analysis, Rollout

Action = Literal["advance", "promote", "hold", "rollback"]


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


def step(state: rev.ServiceState, rollout: Rollout | None, *, canary: Totals | None,
         stable: Totals | None, canary_ready: bool, now: float) -> rev.ServiceState:
    """One tick of a progressive rollout; ``canary``/``stable``: the router's counters now.

    The step's interval counts from when the canary can take its share (``canary_ready``);
    until then the baseline is unset. Once the interval is over the window since the baseline
    is analysed; a hold keeps the baseline (the window grows), any other verdict starts a new
    window. Returns ``state`` itself when nothing changed.
    """
    if state.phase != "progressing" or rollout is None or state.canary is None:
        return state.model_copy(update={"baseline": None}) if state.baseline else state
    current = {"canary": canary or Totals(), "stable": stable or Totals()}
    if not canary_ready:
        waited = now - state.step_started
        if waited >= rollout.readyTimeout:
            return rev.rollback(state, now=now, reason=f"canary {state.canary} has had no "
                                f"ready replica for {waited:.0f} s (readyTimeout "
                                f"{rollout.readyTimeout:.0f} s)")
        if state.baseline:  # the window restarts once it is ready again
            return state.model_copy(update={"baseline": None, "step_started": now})
        return state
    if state.baseline is None:
        return state.model_copy(update={"baseline": current, "step_started": now})
    if now - state.step_started < rollout.interval:
        return state
    verdict = analyse(analysis=rollout.analysis, steps=rollout.steps, percent=state.percent,
                      holds=state.holds,
                      canary=window(current["canary"], state.baseline.get("canary")),
                      stable=window(current["stable"], state.baseline.get("stable")))
    if verdict.action == "promote":
        return rev.promote(state, now=now, reason=verdict.reason)
    if verdict.action == "rollback":
        return rev.rollback(state, now=now, reason=verdict.reason)
    if verdict.action == "advance":
        state = rev.set_step(state, verdict.percent, now=now, reason=verdict.reason)
        return state.model_copy(update={"baseline": current})
    return rev.hold(state, now=now, reason=verdict.reason)
