"""The autoscaling decision, after Knative's KPA: a stable window and a faster panic window.

Pure: the caller records observations into :class:`Window` objects with its own clock and
passes the averages in, so a Kubernetes controller can reuse :func:`decide` with Deployments.

- desired = ceil(average load over the window / target per replica), load being concurrent
  requests or requests per second (``scaleMetric``);
- panic: when the short window asks for ``panicThreshold`` times the current replicas, scale on
  the short window and never down until a whole stable window passes without panic, so a burst
  gets capacity in seconds while a blip does not cause flapping;
- scale-to-zero (``minReplicas: 0``): the last replica stops only after ``scaleToZeroGrace``
  seconds without any request; any demand while at zero asks for one replica at once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from serving.spec.base import parse_seconds

if TYPE_CHECKING:
    from serving.spec.inferenceservice import InferenceService

KNATIVE = "autoscaling.knative.dev/"


@dataclass(frozen=True)
class ScalePolicy:
    min_replicas: int = 1
    max_replicas: int = 1
    target: float = 100.0              # load per replica (concurrency or rps)
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0
    scale_to_zero_grace: float = 30.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    initial_replicas: int | None = None  # replicas at creation; None: min_replicas
    metric: str = "concurrency"        # what ``target`` counts: concurrency or rps

    @property
    def start(self) -> int:
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas


@dataclass(frozen=True)
class ScaleState:
    """What the decision remembers between calls."""

    replicas: int
    panic_until: float | None = None   # panic lasts at least until this time
    last_active: float = 0.0           # last time any request was seen


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    state: ScaleState
    reason: str


def decide(*, policy: ScalePolicy, state: ScaleState, stable_load: float, panic_load: float,
           waiting: int, now: float) -> ScaleDecision:
    """Replicas wanted now. ``waiting``: requests held for a replica (scale from zero)."""
    current = state.replicas
    active = stable_load > 0 or panic_load > 0 or waiting > 0
    last_active = now if active else state.last_active
    want_stable = math.ceil(stable_load / policy.target - 1e-9)
    want_panic = math.ceil(panic_load / policy.target - 1e-9)
    panic_until = state.panic_until
    if panic_until is not None and now >= panic_until:
        panic_until = None
    if current > 0 and want_panic / current >= policy.panic_threshold:
        panic_until = now + policy.stable_window
    if panic_until is not None:
        desired, why = max(want_panic, current), f"panic: short-window load {panic_load:.2f}"
    else:
        desired, why = want_stable, f"load {stable_load:.2f} over the stable window"
    if current > 0:
        desired = min(desired, math.ceil(current * policy.max_scale_up_rate))
        desired = max(desired, math.floor(current / policy.max_scale_down_rate))
    desired = max(policy.min_replicas, min(policy.max_replicas, desired))
    if desired == 0:
        if waiting > 0 or panic_load > 0:
            desired, why = 1, "requests are waiting for a replica"
        elif current > 0 and now - last_active < policy.scale_to_zero_grace:
            desired, why = 1, f"idle for {now - last_active:.0f}s, grace " \
                              f"{policy.scale_to_zero_grace:.0f}s"
        elif current > 0:
            why = f"idle for {now - last_active:.0f}s: scale to zero"
    return ScaleDecision(desired, ScaleState(desired, panic_until, last_active),
                         f"{current} -> {desired}: {why}" if desired != current else why)


class Window:
    """Time-weighted samples of a load signal, averaged over the last ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))
        while self._samples and self._samples[0][0] < now - self.seconds:
            self._samples.popleft()

    def average(self) -> float:
        if not self._samples:
            return 0.0
        return sum(v for _, v in self._samples) / len(self._samples)


def scale_policy(isvc: InferenceService) -> ScalePolicy:
    """The autoscaling policy a predictor asks for: KServe's fields, then Knative's
    ``autoscaling.knative.dev/*`` annotations for what the fields leave unset, then
    ``spec.turnout.autoscaling`` for the windows."""
    p = isvc.spec.predictor
    notes = knative_settings(isvc)
    metric = p.scaleMetric or notes.get("metric") or "concurrency"
    metric = "rps" if metric == "rps" else "concurrency"  # cpu/memory: warned at load
    low = p.minReplicas if p.minReplicas is not None else int(notes.get("min-scale", 1))
    high = p.maxReplicas or int(notes.get("max-scale", 0)) or max(low, 1)
    default_target = 200.0 if metric == "rps" else float(p.containerConcurrency or 100)
    target = float(p.scaleTarget or notes.get("target") or default_target)
    policy = ScalePolicy(min_replicas=low, max_replicas=max(high, low), target=target,
                         metric=metric)
    extra = isvc.spec.turnout.autoscaling if isvc.spec.turnout else None
    if extra is not None:
        policy = replace(policy, stable_window=extra.stableWindow, panic_window=extra.panicWindow,
                         panic_threshold=extra.panicThreshold,
                         scale_to_zero_grace=extra.scaleToZeroGrace,
                         max_scale_up_rate=extra.maxScaleUpRate,
                         max_scale_down_rate=extra.maxScaleDownRate)
    if "window" in notes:
        policy = replace(policy, stable_window=float(notes["window"]))
    if "panic-window-percentage" in notes:
        policy = replace(policy, panic_window=policy.stable_window
                         * float(notes["panic-window-percentage"]) / 100)
    if "panic-threshold-percentage" in notes:
        policy = replace(policy, panic_threshold=float(notes["panic-threshold-percentage"]) / 100)
    if "scale-to-zero-pod-retention-period" in notes:
        policy = replace(policy,
                         scale_to_zero_grace=float(notes["scale-to-zero-pod-retention-period"]))
    if "initial-scale" in notes:
        policy = replace(policy, initial_replicas=min(max(int(notes["initial-scale"]), low),
                                                      policy.max_replicas))
    return policy


# Knative's annotation -> how its value reads; legacy camelCase names are accepted too.
_KNATIVE_KEYS = {"target": float, "metric": str, "min-scale": int, "max-scale": int,
                 "initial-scale": int, "window": parse_seconds,
                 "panic-window-percentage": float, "panic-threshold-percentage": float,
                 "scale-to-zero-pod-retention-period": parse_seconds}
_LEGACY = {"minScale": "min-scale", "maxScale": "max-scale", "initialScale": "initial-scale",
           "panicWindowPercentage": "panic-window-percentage",
           "panicThresholdPercentage": "panic-threshold-percentage"}


def knative_settings(isvc: InferenceService) -> dict[str, float | int | str]:
    """The Knative autoscaling annotations Turnout acts on, parsed (bad values raise
    ``ValueError`` naming the annotation). Others are reported by :func:`knative_ignored`."""
    out: dict[str, float | int | str] = {}
    for key, value in _annotations(isvc).items():
        if not key.startswith(KNATIVE):
            continue
        name = _LEGACY.get(key[len(KNATIVE):], key[len(KNATIVE):])
        parse = _KNATIVE_KEYS.get(name)
        if parse is None:
            continue
        try:
            parsed = parse(value)
        except (TypeError, ValueError):
            raise ValueError(f"annotation {key}: {value!r} is not a valid {name}") from None
        if name == "metric" and parsed not in ("concurrency", "rps", "cpu", "memory"):
            raise ValueError(f"annotation {key}: {value!r} is not concurrency, rps, cpu or memory")
        if isinstance(parsed, int | float) and not isinstance(parsed, bool) and parsed < 0:
            raise ValueError(f"annotation {key}: {value!r} must not be negative")
        out[name] = parsed
    return out


def knative_ignored(isvc: InferenceService) -> list[str]:
    """Knative autoscaling annotations accepted but not acted on locally, by full name."""
    ignored = []
    for key in _annotations(isvc):
        name = key[len(KNATIVE):]
        if key.startswith(KNATIVE) and _LEGACY.get(name, name) not in _KNATIVE_KEYS:
            ignored.append(key)
    return ignored


def _annotations(isvc: InferenceService) -> dict[str, str]:
    """Annotations of the resource and of the predictor (KServe allows both)."""
    return {**isvc.metadata.annotations, **(isvc.spec.predictor.annotations or {})}
