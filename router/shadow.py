"""Mirrored (shadow) traffic: copies sent beside the primary, never in its way.

Concurrency design: a copy runs as its own task started when the primary starts; the primary
path never awaits it. The task waits for the shadow answer, then for the primary's answer
(handed over through a future the edge fills after forwarding), then compares both and counts
the result. Each mirror has a cap on copies in flight; a copy over the cap is dropped and
counted, so a slow or dead shadow costs at most ``max_in_flight`` request bodies of memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from router.compare import Comparison
from router.disagreements import Disagreement, DisagreementRing, MirrorOrigin
from router.metrics import RouterMetrics
from router.table import VariantRoute
from serving.spec.routes import Mirror
from serving.transport import tracing

log = logging.getLogger("turnout.router.shadow")
A = TypeVar("A")


async def _traced(send: Callable[[], Awaitable[A]], key: tuple[str, str]) -> A:
    """The copy in a ``shadow`` span: a child of the route span that started it (the task
    inherits its context), marked so that trace views can tell copies from answers."""
    with tracing.span("shadow", attributes={"turnout.shadow": True, "turnout.service": key[0],
                                            "turnout.variant": key[1]}):
        return await send()


class PrimaryAnswer(Generic[A]):
    """The primary answer as the shadow task will see it; set once by the edge.

    The gRPC edge runs on threads: it passes the router's loop and sets the answer with
    :meth:`set_threadsafe`; the loop-side edges use :meth:`set`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.future: asyncio.Future[A | None] = self.loop.create_future()

    def set(self, answer: A | None) -> None:
        if not self.future.done():
            self.future.set_result(answer)

    def set_threadsafe(self, answer: A | None) -> None:
        self.loop.call_soon_threadsafe(self.set, answer)


class Shadower:
    def __init__(self, metrics: RouterMetrics, rng: random.Random | None = None) -> None:
        self.metrics = metrics
        self.rng = rng or random.Random()
        self._in_flight: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # answers that differ from the primary's (GET /mirror/disagreements, payload log)
        self.disagreements = DisagreementRing()

    def wanted(self, mirror: Mirror) -> bool:
        return mirror.percent >= 100 or self.rng.random() * 100 < mirror.percent

    def drop(self, variant: VariantRoute) -> None:
        """Count a copy not sent: its variant has no endpoint (scaled to zero). Copies are
        never held for one."""
        self.metrics.shadow.labels(variant.service, variant.name, "dropped").inc()

    def start(self, *, mirror: Mirror, variant: VariantRoute, send: Callable[[], Awaitable[A]],
              primary: PrimaryAnswer[A], compare: Callable[[A, A], Comparison | None],
              origin: MirrorOrigin | None = None) -> None:
        """Start one copy unless the mirror's cap is reached; returns at once. ``origin``:
        the request it copies, recorded with the answers if they disagree."""
        key = (variant.service, variant.name)
        if self._in_flight.get(key, 0) >= mirror.max_in_flight:
            self.metrics.shadow.labels(*key, "dropped").inc()
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        task = asyncio.create_task(self._run(key, mirror, send, primary, compare, origin,
                                             variant.spec.revision))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: tuple[str, str], mirror: Mirror, send: Callable[[], Awaitable[A]],
                   primary: PrimaryAnswer[A], compare: Callable[[A, A], Comparison | None],
                   origin: MirrorOrigin | None, revision: str | None) -> None:
        try:
            self.metrics.shadow.labels(*key, "sent").inc()
            shadow_answer = await asyncio.wait_for(
                _traced(send, key) if tracing.ON else send(), mirror.timeout_seconds)
            primary_answer = await asyncio.wait_for(asyncio.shield(primary.future),
                                                    mirror.timeout_seconds)
            if primary_answer is None:
                return
            result = compare(primary_answer, shadow_answer)
            if result is not None:
                self._count(key, result)
                if origin is not None and result.disagrees:
                    self.disagreements.add(Disagreement.of(*key, revision, origin, result))
        except Exception as exc:  # a shadow failure is data, never a client error
            self.metrics.shadow.labels(*key, "error").inc()
            log.debug("shadow %s/%s failed: %s", *key, exc)
        finally:
            self._in_flight[key] -= 1

    def _count(self, key: tuple[str, str], result: Comparison) -> None:
        m = self.metrics
        m.shadow.labels(*key, "compared").inc()
        m.shadow_compared.labels(*key, "class").inc(result.class_total)
        m.shadow_compared.labels(*key, "numeric").inc(result.numeric_total)
        m.shadow_agreed.labels(*key).inc(result.class_agreed)
        m.shadow_abs_diff.labels(*key).inc(result.abs_diff_sum)

    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
