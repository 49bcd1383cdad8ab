"""Holding requests while their variant has no ready endpoint (scale from zero).

A variant has no ready endpoint when it lists none (scaled to zero) or when every endpoint of
the pool the request would use fails its active health check. Where the service's
``upstream.hold_seconds`` is above 0, a request that chose such a variant waits here instead of
being answered at once. It is bounded in time (``hold_seconds``, and the client's or the
graph's own deadline) and in count (``max_held`` per variant; on the gRPC edge also half of its
handler threads, since each held call blocks one). Past a bound the answer is one clients
retry: :class:`NoEndpointReady`, 503 with ``Retry-After`` on REST, UNAVAILABLE on gRPC.

A held request is woken whenever an endpoint may have become ready: a new routing table (admin
``PUT /config``, a file reload) or a health check's verdict turning healthy. It then re-resolves
on the table in force: the same service by name (gone: 404, as a request arriving now gets),
the same variant by name when it still exists, else a new choice by the new table's rules,
stickiness and weights. It goes on once that variant has a ready endpoint (or holding no longer
applies to it), on the new table's pools.

Waiting: the REST edge and graph steps are coroutines on the event loop and await a future;
the gRPC edge's handler threads block on a ``threading.Event``. Wake-ups come from the loop and
reach both. The client going away (REST connection closed, gRPC call cancelled) ends the wait.

Cost: a request to a variant with a ready endpoint never gets here; the edges read one
attribute (``Pool.ready``) to know. The lock below is taken only by requests that hold, and by
wake-ups.

Demand signal: held requests are counted per (service, variant), in the gauge
``turnout_router_held_requests`` and in ``GET /status`` rows (``held``); how each wait ended in
``turnout_router_held_total{outcome}`` (released, timeout, overflow, cancelled).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from router.balance import Pool
from router.forward import UpstreamUnavailable
from router.metrics import RouterMetrics
from router.table import RoutingTable, ServiceRoute, VariantRoute

Key = tuple[str, str]
PoolOf = Callable[[ServiceRoute, VariantRoute], Pool]
Routed = tuple[ServiceRoute, VariantRoute]
RETRY_AFTER_SECONDS = 1


class NoEndpointReady(UpstreamUnavailable):
    """A held request past a bound (503 with ``Retry-After`` / UNAVAILABLE): clients retry it,
    where they would not retry "not found" or "not ready"."""

    retry_after: int | None = RETRY_AFTER_SECONDS


class ClientGone(NoEndpointReady):
    """The client went away while its request was held (or the router is stopping)."""


def wants_hold(service: ServiceRoute, variant: VariantRoute, pool: Pool) -> bool:
    """Whether a request for ``variant`` through ``pool`` waits for a ready endpoint.

    Only where the service holds (``hold_seconds`` > 0), and only for a pool with endpoints
    all failing their checks, or a variant listing no endpoint at all. A variant with endpoints
    for the other protocol only is answered at once, as before: no endpoint will come for this
    one by waiting. Ejected endpoints do not hold requests: ejection is a guess from errors
    that the retry loop's panic mode overrides, not a verdict.
    """
    if service.upstream.hold_seconds <= 0:
        return False
    if pool.endpoints:
        return not pool.ready
    return variant.spec.empty


class Waiter(Protocol):
    gone: bool

    def wake(self) -> None: ...

    def cancel(self) -> None: ...


class _LoopWaiter:
    """A held coroutine's wake-up: a future on its loop, set from any thread."""

    __slots__ = ("loop", "thread", "future", "gone")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.gone = False

    def reset(self) -> None:
        if self.future.done():
            self.future = self.loop.create_future()

    def _set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            self._set()
        else:
            self.loop.call_soon_threadsafe(self._set)

    def cancel(self) -> None:
        self.gone = True
        self.wake()

    async def wait(self, timeout: float) -> None:
        timer = self.loop.call_later(timeout, self._set)
        try:
            await self.future
        finally:
            timer.cancel()


class _ThreadWaiter:
    """A held gRPC handler thread's wake-up."""

    __slots__ = ("event", "gone")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.gone = False

    def reset(self) -> None:
        self.event.clear()

    def wake(self) -> None:
        self.event.set()

    def cancel(self) -> None:
        self.gone = True
        self.event.set()

    def wait(self, timeout: float) -> None:
        self.event.wait(timeout)


class _Held:
    """One held request: where it is routed now, its count's key and its deadline."""

    __slots__ = ("service", "variant", "key", "pool_of", "headers", "seconds", "deadline",
                 "capped", "thread", "outcome")

    def __init__(self, service: ServiceRoute, variant: VariantRoute, pool_of: PoolOf,
                 headers: Callable[[], Mapping[str, str]], cap: float | None,
                 thread: bool) -> None:
        self.service, self.variant = service, variant
        self.key: Key = (service.name, variant.name)
        self.pool_of, self.headers, self.thread = pool_of, headers, thread
        self.outcome = "cancelled"  # how the wait ended, for turnout_router_held_total
        self.seconds = service.upstream.hold_seconds
        deadline = time.monotonic() + self.seconds
        self.capped = cap is not None and cap < deadline
        self.deadline = cap if cap is not None and self.capped else deadline

    def timed_out(self) -> NoEndpointReady:
        what = f"{self.service.name}/{self.variant.name}"
        if self.capped:
            return NoEndpointReady(f"no endpoint of {what} became ready within the request's "
                                   "time; retry shortly")
        return NoEndpointReady(f"no endpoint of {what} became ready within {self.seconds:g} s "
                               "(hold_seconds); retry shortly")


class Holds:
    """Held requests of one router: counts per (service, variant), waiters, wake-ups."""

    def __init__(self, metrics: RouterMetrics, current: Callable[[], RoutingTable]) -> None:
        self.metrics = metrics
        self.current = current  # the routing table in force
        # gRPC handler threads that may hold at once (each blocks one); 0: no limit. Set by
        # the gRPC edge to half its threads, so held calls cannot starve calls to variants
        # that have endpoints.
        self.max_threads = 0
        self.closing = False
        self._lock = threading.Lock()
        self._counts: dict[Key, int] = {}
        self._threads = 0
        self._waiters: set[Waiter] = set()

    def held(self, service: str, variant: str) -> int:
        """Requests held now for ``service``/``variant``."""
        return self._counts.get((service, variant), 0)

    def wake(self) -> None:
        """Something may have made an endpoint ready: every held request looks again."""
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()

    def close(self) -> None:
        """The router is stopping: held requests are answered (503, retried elsewhere) now."""
        self.closing = True
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.cancel()

    # -- the two ways to wait ---------------------------------------------------------------

    async def hold(self, service: ServiceRoute, variant: VariantRoute, *, pool_of: PoolOf,
                   headers: Callable[[], Mapping[str, str]], deadline: float | None = None,
                   watch: Callable[[Waiter], Callable[[], object] | None] | None = None) -> Routed:
        """On the event loop: wait until the request's variant has a ready endpoint.

        Returns the (service, variant) to call, from the table in force then; returns the
        arguments at once when holding does not apply. ``deadline`` (monotonic) caps the wait;
        ``watch`` registers the waiter with what tells of the client going away and returns
        how to unregister it. Raises :class:`NoEndpointReady` past a bound.
        """
        if not wants_hold(service, variant, pool_of(service, variant)):
            return service, variant
        held = self._enter(service, variant, pool_of, headers, deadline, thread=False)
        waiter = _LoopWaiter()
        unwatch = self._add(waiter, watch)
        try:
            while (left := self._look(held, waiter)) is not None:
                await waiter.wait(left)
            return held.service, held.variant
        finally:
            self._remove(waiter, unwatch)
            self._leave(held)

    def hold_blocking(self, service: ServiceRoute, variant: VariantRoute, *, pool_of: PoolOf,
                      headers: Callable[[], Mapping[str, str]], deadline: float | None = None,
                      watch: Callable[[Waiter], Callable[[], object] | None] | None = None
                      ) -> Routed:
        """:meth:`hold` for a gRPC handler thread, which blocks while it waits."""
        if not wants_hold(service, variant, pool_of(service, variant)):
            return service, variant
        held = self._enter(service, variant, pool_of, headers, deadline, thread=True)
        waiter = _ThreadWaiter()
        unwatch = self._add(waiter, watch)
        try:
            while (left := self._look(held, waiter)) is not None:
                waiter.wait(left)
            return held.service, held.variant
        finally:
            self._remove(waiter, unwatch)
            self._leave(held)

    # -- bookkeeping --------------------------------------------------------------------------

    def _look(self, held: _Held, waiter: _LoopWaiter | _ThreadWaiter) -> float | None:
        """One look after a wake-up: None when the request may go on, else the seconds left
        to wait. Raises when the client is gone or time is up; ``held.outcome`` says which."""
        waiter.reset()
        if waiter.gone or self.closing:
            held.outcome = "cancelled"
            raise self._gone()
        held.outcome = "released"  # also when its service is gone (ModelNotFound from _ready)
        if self._ready(held):
            return None
        held.outcome = "cancelled"  # unless it ends otherwise: its task was cancelled
        left = held.deadline - time.monotonic()
        if left <= 0:
            held.outcome = "timeout"
            raise held.timed_out()
        return left

    def _ready(self, held: _Held) -> bool:
        """Re-resolve ``held`` on the table in force; True when it may go on.

        A service no longer configured raises ModelNotFound (as for a request arriving now).
        """
        table = self.current()
        service = table.service(held.service.name)
        variant = service.variants.get(held.variant.name)
        if variant is None:
            variant, _ = table.pick(service, held.headers())
        held.service, held.variant = service, variant
        key = (service.name, variant.name)
        if key != held.key:
            self._move(held.key, key)
            held.key = key
        return not wants_hold(service, variant, held.pool_of(service, variant))

    def _enter(self, service: ServiceRoute, variant: VariantRoute, pool_of: PoolOf,
               headers: Callable[[], Mapping[str, str]], deadline: float | None,
               thread: bool) -> _Held:
        key = (service.name, variant.name)
        limit = service.upstream.max_held
        refused = None
        with self._lock:
            count = self._counts.get(key, 0)
            if self.closing:
                refused = "the router is stopping; retry shortly"
            elif count >= limit:
                refused = (f"{key[0]}/{key[1]} has no ready endpoint and already holds {count} "
                           f"requests waiting for one (max_held {limit}); retry shortly")
            elif thread and self.max_threads and self._threads >= self.max_threads:
                refused = (f"{key[0]}/{key[1]} has no ready endpoint and {self._threads} gRPC "
                           "calls are already held (each holds one of the router's gRPC "
                           "threads; at most half of them hold); retry shortly")
            else:
                self._counts[key] = count + 1
                if thread:
                    self._threads += 1
        if refused is not None:
            self.metrics.held_total.labels(*key, "cancelled" if self.closing else "overflow").inc()
            raise NoEndpointReady(refused)
        self.metrics.held.labels(*key).inc()
        return _Held(service, variant, pool_of, headers, deadline, thread)

    def _move(self, old: Key, new: Key) -> None:
        """The request now waits for another variant (its own left the routes)."""
        with self._lock:
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
            self._counts[new] = self._counts.get(new, 0) + 1
        self.metrics.held.labels(*old).dec()
        self.metrics.held.labels(*new).inc()

    def _leave(self, held: _Held) -> None:
        with self._lock:
            self._counts[held.key] -= 1
            if not self._counts[held.key]:
                del self._counts[held.key]
            if held.thread:
                self._threads -= 1
        self.metrics.held.labels(*held.key).dec()
        self.metrics.held_total.labels(*held.key, held.outcome).inc()

    def _add(self, waiter: Waiter,
             watch: Callable[[Waiter], Callable[[], object] | None] | None
             ) -> Callable[[], object] | None:
        with self._lock:
            self._waiters.add(waiter)
        return watch(waiter) if watch is not None else None

    def _remove(self, waiter: Waiter, unwatch: Callable[[], object] | None) -> None:
        with self._lock:
            self._waiters.discard(waiter)
        if unwatch is not None:
            unwatch()

    def _gone(self) -> ClientGone:
        if self.closing:
            return ClientGone("the router is stopping; retry shortly")
        return ClientGone("the client went away while its request was held")
