"""One request to one variant: pending cap, endpoint choice, retries, ejection and metrics.

Protocol-neutral: the REST and gRPC edges pass an ``attempt`` that performs one call on one
endpoint and a ``classify`` that says what its answer means. Retried: connect errors, a
connection dropped before any answer (inference has no side effects, so a repeat is safe) and
"unavailable" answers (503 / UNAVAILABLE) — each on another endpoint, within the variant's
retry budget and the request's deadline. Never retried: timeouts (the work may be running).
Passive ejection counts connect errors, drops, timeouts and 502/503/504 — not a 500, which is
the model raising on this input and says nothing about the replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from serving.protocol.errors import DeadlineExceeded, ModelNotReady

from .balance import Endpoint, Pool
from .client import UpstreamError
from .metrics import RouterMetrics
from .table import VariantRoute

log = logging.getLogger("turnout.router")

T = TypeVar("T")
Verdict = Literal["ok", "retry", "failed"]  # failed: an answer to pass on, but a strike


class UpstreamUnavailable(ModelNotReady):
    """No endpoint of the variant gave an answer (503 / UNAVAILABLE)."""


class UpstreamTimeout(DeadlineExceeded):
    """The chosen endpoint did not answer within the request's deadline (504 /
    DEADLINE_EXCEEDED, as a gateway reports it); not retried, the work may still be running."""


async def call_variant(*, variant: VariantRoute, pool: Pool, max_attempts: int, deadline: float,
                       attempt: Callable[[Endpoint, float], Awaitable[T]],
                       classify: Callable[[T], tuple[Verdict, str]],
                       metrics: RouterMetrics) -> T:
    """Run ``attempt`` on endpoints of ``pool`` until an answer worth returning.

    ``classify`` maps an answer to a verdict and an outcome label (e.g. the status code).
    Raises :class:`UpstreamUnavailable` when no attempt produced an answer.
    """
    labels = (variant.service, variant.name)
    variant.budget.deposit()
    tried: set[Endpoint] = set()
    last_answer: T | None = None
    have_answer = False
    last_error = "no endpoints configured for this protocol"
    for number in range(max_attempts):
        endpoint = pool.choose(tried)
        remaining = deadline - time.monotonic()
        if endpoint is None or remaining <= 0:
            break
        if number > 0:
            if not variant.budget.try_spend():
                metrics.retry_budget_exhausted.labels(*labels).inc()
                break
            metrics.retries.labels(*labels).inc()
        tried.add(endpoint)
        endpoint.outstanding += 1
        started = time.perf_counter()
        try:
            answer = await attempt(endpoint, remaining)
        except UpstreamError as err:
            _strike(pool, endpoint, variant, metrics)
            metrics.upstream.labels(*labels, endpoint.address, err.kind).inc()
            last_error = str(err)
            if err.kind == "timeout":
                raise UpstreamTimeout(f"{variant.service}/{variant.name}: {err}") from None
            continue
        finally:
            endpoint.outstanding -= 1
        metrics.upstream_duration.labels(*labels, endpoint.address).observe(
            time.perf_counter() - started)
        verdict, outcome = classify(answer)
        metrics.upstream.labels(*labels, endpoint.address, outcome).inc()
        if verdict == "ok":
            pool.record_success(endpoint)
            return answer
        _strike(pool, endpoint, variant, metrics)
        if verdict == "failed":
            return answer
        last_answer, have_answer = answer, True
    if have_answer:
        return last_answer  # type: ignore[return-value]
    raise UpstreamUnavailable(f"no endpoint of {variant.service}/{variant.name} answered: "
                              f"{last_error}")


def _strike(pool: Pool, endpoint: Endpoint, variant: VariantRoute, metrics: RouterMetrics) -> None:
    if pool.record_failure(endpoint):
        metrics.ejections.labels(variant.service, variant.name, endpoint.address).inc()
        log.warning("ejected %s of %s/%s until it recovers", endpoint.address, variant.service,
                    variant.name)
