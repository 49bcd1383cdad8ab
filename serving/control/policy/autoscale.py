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
from dataclasses import dataclass


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
