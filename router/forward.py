"""One request to one variant: pending cap, endpoint choice, retries, ejection and metrics.

Protocol-neutral: the REST and gRPC edges pass an ``attempt`` that performs one call on one
endpoint and a ``classify`` that says what its answer means. Retried: connect errors, a
connection dropped before any answer (inference has no side effects, so a repeat is safe) and
"unavailable" answers (503 / UNAVAILABLE) — each on another endpoint, within the variant's
retry budget and the request's deadline. Never retried: timeouts (the work may be running).
Passive ejection counts connect errors, drops, timeouts and 502/503/504 in a row. A 500 (the
model raising) is passed on and never retried, and is no strike on its own — one bad input says
nothing about the replica — but each endpoint's share of 5xx answers is compared with its
peers' every outlier window (Envoy's success-rate detection, :meth:`Pool.record_answer`): a
replica that fails far more often than the others is ejected, a model that fails everywhere
is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Literal, TypeVar

from router.balance import Endpoint, Pool
from router.client import UpstreamError
from router.metrics import RouterMetrics
from router.table import VariantRoute
from serving.protocol.errors import DeadlineExceeded, ModelNotReady

log = logging.getLogger("turnout.router")

T = TypeVar("T")
# failed: an answer to pass on, but a strike; error: an answer to pass on that counts against
# the endpoint's success rate (a 500), not a strike
Verdict = Literal["ok", "error", "retry", "failed"]


class UpstreamUnavailable(ModelNotReady):
    """No endpoint of the variant gave an answer (503 / UNAVAILABLE)."""


class UpstreamTimeout(DeadlineExceeded):
    """The chosen endpoint did not answer within the request's deadline (504 /
    DEADLINE_EXCEEDED, as a gateway reports it); not retried, the work may still be running."""


class _Attempts(Generic[T]):
    """The retry loop's bookkeeping, shared by :func:`call_variant` (event loop) and
    :func:`call_variant_blocking` (gRPC edge threads), so both retry, eject and count alike."""

    __slots__ = ("variant", "pool", "max_attempts", "deadline", "classify", "metrics", "labels",
                 "tried", "number", "last_answer", "have_answer", "last_error")

    def __init__(self, variant: VariantRoute, pool: Pool, max_attempts: int, deadline: float,
                 classify: Callable[[T], tuple[Verdict, str]], metrics: RouterMetrics) -> None:
        self.variant, self.pool, self.max_attempts = variant, pool, max_attempts
        self.deadline, self.classify, self.metrics = deadline, classify, metrics
        self.labels = (variant.service, variant.name)
        self.tried: set[Endpoint] = set()
        self.number = 0
        self.last_answer: T | None = None
        self.have_answer = False
        self.last_error = "no endpoints configured for this protocol"
        variant.budget.deposit()

    def next(self) -> tuple[Endpoint, float] | None:
        """The endpoint and time left for the next attempt (counted in flight), or ``None``."""
        if self.number >= self.max_attempts:
            return None
        endpoint = self.pool.choose(self.tried)
        remaining = self.deadline - time.monotonic()
        if endpoint is None or remaining <= 0:
            return None
        if self.number > 0:
            if not self.variant.budget.try_spend():
                self.metrics.retry_budget_exhausted.labels(*self.labels).inc()
                return None
            self.metrics.retries.labels(*self.labels).inc()
        self.number += 1
        self.tried.add(endpoint)
        self.pool.acquire(endpoint)
        return endpoint, remaining

    def failed(self, endpoint: Endpoint, err: UpstreamError) -> None:
        """No answer from ``endpoint``; raises for a timeout (never retried)."""
        _strike(self.pool, endpoint, self.variant, self.metrics)
        self.metrics.upstream.labels(*self.labels, endpoint.address, err.kind).inc()
        # clients learn what went wrong, not where: upstream addresses stay in the metrics'
        # endpoint label and the debug log
        log.debug("%s/%s: %s", *self.labels, err)
        self.last_error = str(err).replace(endpoint.address, "an endpoint")
        if err.kind == "timeout":
            raise UpstreamTimeout(f"{self.variant.service}/{self.variant.name}: "
                                  f"{self.last_error}") from None

    def answered(self, endpoint: Endpoint, started: float, answer: T) -> bool:
        """Record ``answer``; True when it is the one to return."""
        self.metrics.upstream_duration.labels(*self.labels, endpoint.address).observe(
            time.perf_counter() - started)
        verdict, outcome = self.classify(answer)
        self.metrics.upstream.labels(*self.labels, endpoint.address, outcome).inc()
        answered = verdict == "ok" or verdict == "error"
        if answered:
            self.pool.record_success(endpoint)
        for ejected in self.pool.record_answer(endpoint, error=verdict != "ok"):
            self.metrics.ejections.labels(*self.labels, ejected.address).inc()
            log.warning("ejected %s of %s/%s: its share of 5xx answers is far above its peers'",
                        ejected.address, *self.labels)
        if answered:
            return True
        _strike(self.pool, endpoint, self.variant, self.metrics)
        if verdict == "failed":
            return True
        self.last_answer, self.have_answer = answer, True
        return False

    def result(self) -> T:
        """After the last attempt: the last retryable answer, else UpstreamUnavailable."""
        if self.have_answer:
            return self.last_answer  # type: ignore[return-value]
        raise UpstreamUnavailable(f"no endpoint of {self.variant.service}/{self.variant.name} "
                                  f"answered: {self.last_error}")


async def call_variant(*, variant: VariantRoute, pool: Pool, max_attempts: int, deadline: float,
                       attempt: Callable[[Endpoint, float], Awaitable[T]],
                       classify: Callable[[T], tuple[Verdict, str]],
                       metrics: RouterMetrics) -> T:
    """Run ``attempt`` on endpoints of ``pool`` until an answer worth returning.

    ``classify`` maps an answer to a verdict and an outcome label (e.g. the status code).
    Raises :class:`UpstreamUnavailable` when no attempt produced an answer.
    """
    run = _Attempts(variant, pool, max_attempts, deadline, classify, metrics)
    while (step := run.next()) is not None:
        endpoint, remaining = step
        started = time.perf_counter()
        failure: UpstreamError | None = None
        try:
            answer = await attempt(endpoint, remaining)
        except UpstreamError as err:
            failure = err
        finally:
            pool.release(endpoint)
        if failure is not None:  # (no `continue` inside try/finally: mypyc cannot compile it)
            run.failed(endpoint, failure)
            continue
        if run.answered(endpoint, started, answer):
            return answer
    return run.result()


def call_variant_blocking(*, variant: VariantRoute, pool: Pool, max_attempts: int,
                          deadline: float, attempt: Callable[[Endpoint, float], T],
                          classify: Callable[[T], tuple[Verdict, str]],
                          metrics: RouterMetrics) -> T:
    """:func:`call_variant` for a thread that waits on its upstream call (the gRPC edge)."""
    run = _Attempts(variant, pool, max_attempts, deadline, classify, metrics)
    while (step := run.next()) is not None:
        endpoint, remaining = step
        started = time.perf_counter()
        failure: UpstreamError | None = None
        try:
            answer = attempt(endpoint, remaining)
        except UpstreamError as err:
            failure = err
        finally:
            pool.release(endpoint)
        if failure is not None:  # (no `continue` inside try/finally: mypyc cannot compile it)
            run.failed(endpoint, failure)
            continue
        if run.answered(endpoint, started, answer):
            return answer
    return run.result()


def _strike(pool: Pool, endpoint: Endpoint, variant: VariantRoute, metrics: RouterMetrics) -> None:
    if pool.record_failure(endpoint):
        metrics.ejections.labels(variant.service, variant.name, endpoint.address).inc()
        log.warning("ejected %s of %s/%s until it recovers", endpoint.address, variant.service,
                    variant.name)
