"""Endpoint state, least-outstanding power-of-two-choices, outlier ejection and the retry budget.

Concurrency: the REST edge and graphs change this state from the event loop, the gRPC edge from
its handler threads. Read-modify-write updates (outstanding counts, failure streaks, budget
tokens) take the owning object's lock; single assignments and reads need none under the GIL.
Time comes from an injected clock so tests can step it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(eq=False)
class Endpoint:
    """One upstream address with what the balancer knows about it."""

    address: str
    outstanding: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    ejections: int = 0  # in a row; reset by a success after re-admission
    answers: int = 0  # answers in the current outlier window (success-rate detection)
    errors: int = 0   # of which 5xx (a 500 too: the model failing on this replica)
    healthy: bool = True  # the active health check's verdict
    check_streak: int = 0  # passed (>0) or failed (<0) checks in a row
    # REST endpoints: whether the server takes ModelInfer as protobuf over HTTP (GET /v2 lists
    # the extension); None until a health check has asked
    speaks_protobuf: bool | None = None

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until


def p2c(candidates: Sequence[Endpoint], rng: random.Random) -> Endpoint:
    """Power of two choices: of two random candidates, the one with fewer requests in flight.

    Two samples avoid the herd that "global least outstanding" causes when many requests see
    the same minimum at once, and cost O(1) whatever the pool size.
    """
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    first, second = candidates[a], candidates[b]
    return second if second.outstanding < first.outstanding else first


@dataclass(eq=False)
class Pool:
    """The endpoints of one variant for one protocol, with ejection bookkeeping.

    ``ready`` says whether an endpoint is there to serve: one is listed and, where active
    checks run (``checked``), passes them. The edges read it on every request (an attribute,
    no lock) to decide whether to hold the request; it changes only when the pool is built and
    when a check's verdict flips (:meth:`refresh`), both on the event loop.
    """

    endpoints: list[Endpoint]
    eject_after: int = 5
    eject_seconds: float = 10.0
    max_eject_seconds: float = 300.0
    outlier_interval: float = 10.0
    outlier_min_requests: int = 20
    outlier_min_error_rate: float = 0.5
    outlier_margin: float = 0.3
    max_ejected_share: float = 0.5
    clock: Clock = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    checked: bool = True
    ready: bool = field(init=False, default=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _window_started: float = field(init=False, default=-1.0)

    def __post_init__(self) -> None:
        # set here too: compiled (serving/native.py), init=False fields get no default
        self._window_started = -1.0
        self.refresh()

    def refresh(self) -> bool:
        """Recompute :attr:`ready` from the endpoints' check verdicts; returns it."""
        endpoints = self.endpoints
        self.ready = any(e.healthy for e in endpoints) if self.checked else bool(endpoints)
        return self.ready

    def acquire(self, endpoint: Endpoint) -> None:
        """Count one request in flight at ``endpoint`` (what p2c compares)."""
        with self._lock:
            endpoint.outstanding += 1

    def release(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.outstanding -= 1

    def choose(self, exclude: frozenset[Endpoint] | set[Endpoint] = frozenset()) -> Endpoint | None:
        """An endpoint for the next attempt, or ``None`` when every endpoint was tried.

        When all endpoints are ejected or unhealthy the router "panics" and uses them all
        (as Envoy does): a guess at a recovering replica beats refusing every request.
        """
        endpoints = self.endpoints
        if len(endpoints) == 1:  # ejected or not, the only endpoint is the choice (panic mode)
            return None if endpoints[0] in exclude else endpoints[0]
        now = self.clock()
        fresh = [e for e in endpoints if e not in exclude]
        if not fresh:
            return None
        ready = [e for e in fresh if e.available(now)]
        return p2c(ready or fresh, self.rng)

    def record_success(self, endpoint: Endpoint) -> None:
        endpoint.consecutive_failures = 0
        if self.clock() >= endpoint.ejected_until:
            endpoint.ejections = 0

    def record_failure(self, endpoint: Endpoint) -> bool:
        """Count a connect error or 5xx; returns True when this failure ejected the endpoint."""
        with self._lock:
            endpoint.consecutive_failures += 1
            now = self.clock()
            if endpoint.consecutive_failures < self.eject_after or now < endpoint.ejected_until:
                return False
            duration = min(self.eject_seconds * 2 ** endpoint.ejections, self.max_eject_seconds)
            endpoint.ejected_until = now + duration
            endpoint.ejections += 1
            endpoint.consecutive_failures = 0
            return True

    def record_answer(self, endpoint: Endpoint, *, error: bool) -> list[Endpoint]:
        """Count one answer for success-rate detection; returns the endpoints this ejected.

        Counting is two increments without the lock (a lost count under a thread race only
        blurs a statistic); once per ``outlier_interval`` the window is judged under the lock.
        """
        endpoint.answers += 1
        if error:
            endpoint.errors += 1
        now = self.clock()
        if self._window_started < 0:
            self._window_started = now
        if now - self._window_started < self.outlier_interval:
            return []
        with self._lock:
            if now - self._window_started < self.outlier_interval:
                return []  # another thread judged this window
            self._window_started = now
            return self._eject_outliers(now)

    def _eject_outliers(self, now: float) -> list[Endpoint]:
        """Envoy-style success-rate outlier detection over the window just ended: an endpoint
        whose 5xx share is high and well above its peers' is ejected, at most
        ``max_ejected_share`` of the endpoints at once. Resets the window's counts."""
        endpoints = self.endpoints
        judged = [(e, e.errors / e.answers) for e in endpoints if e.answers >= self.outlier_min_requests]
        for e in endpoints:
            e.answers = e.errors = 0
        if len(judged) < 2:
            return []  # no peers to compare with: one replica failing is the model failing
        allowed = max(1, int(len(endpoints) * self.max_ejected_share))
        ejected = sum(1 for e in endpoints if now < e.ejected_until)
        out: list[Endpoint] = []
        for endpoint, rate in sorted(judged, key=lambda pair: -pair[1]):
            peers = [r for e, r in judged if e is not endpoint]
            if rate < self.outlier_min_error_rate or rate - sum(peers) / len(peers) < self.outlier_margin:
                continue
            if ejected >= allowed or now < endpoint.ejected_until:
                continue
            duration = min(self.eject_seconds * 2 ** endpoint.ejections, self.max_eject_seconds)
            endpoint.ejected_until = now + duration
            endpoint.ejections += 1
            ejected += 1
            out.append(endpoint)
        return out

    def record_check(self, endpoint: Endpoint, ok: bool, *, healthy_after: int,
                     unhealthy_after: int) -> bool | None:
        """Apply one active check; returns the new verdict when it changed, else ``None``."""
        if ok:
            endpoint.check_streak = max(endpoint.check_streak, 0) + 1
            if not endpoint.healthy and endpoint.check_streak >= healthy_after:
                endpoint.healthy = True
                return True
        else:
            endpoint.check_streak = min(endpoint.check_streak, 0) - 1
            if endpoint.healthy and -endpoint.check_streak >= unhealthy_after:
                endpoint.healthy = False
                return False
        return None


@dataclass(eq=False)
class RetryBudget:
    """Retries as a share of recent requests (Linkerd's budget), plus a small floor per second.

    Each request deposits ``ratio`` tokens; each retry withdraws one. Tokens older than
    ``window`` seconds expire, so a burst of failures cannot spend credit earned long ago, and
    a failing variant gets at most ``ratio`` extra load instead of ``max_attempts`` times.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0
    clock: Clock = time.monotonic
    _tokens: float = 0.0
    _floor: float = 0.0
    _last: float = field(default=-1.0)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _refill(self) -> None:
        now = self.clock()
        if self._last < 0:
            self._last = now
            self._floor = self.min_per_second
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens *= max(0.0, 1.0 - elapsed / self.window)
            self._floor = min(self.min_per_second, self._floor + elapsed * self.min_per_second)
            self._last = now

    def deposit(self) -> None:
        with self._lock:
            self._refill()
            self._tokens = min(self._tokens + self.ratio, 1e9)

    def try_spend(self) -> bool:
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - 1e-9:  # 0.2 added five times is 0.999…
                self._tokens -= 1.0
                return True
            if self._floor >= 1.0:
                self._floor -= 1.0
                return True
            return False
