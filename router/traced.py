"""Span hooks of the router's upstream calls: one ``upstream attempt`` span per try.

Used only when :data:`serving.transport.tracing.ON`; each attempt sends its own span's
``traceparent`` (REST headers, gRPC metadata), so a retry shows as a second attempt span with
its number, endpoint and outcome, and the model server's spans hang under the try that
reached it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from router.balance import Endpoint
from router.table import VariantRoute
from serving.transport import tracing

T = TypeVar("T")
Attempt = Callable[[Endpoint, float], Awaitable[T]]


def attempts(attempt: Callable[[Endpoint, float, list[tuple[str, str]]], Awaitable[T]],
             headers: list[tuple[str, str]], variant: VariantRoute,
             status: Callable[[T], int | str]) -> Attempt[T]:
    """``attempt`` (which sends the headers it is given) wrapped in numbered spans."""
    number = 0

    async def traced(endpoint: Endpoint, remaining: float) -> T:
        nonlocal number
        number += 1
        with tracing.span("upstream attempt", kind="client",
                          attributes=_attributes(variant, endpoint, number)):
            sent = list(headers)
            tracing.inject(sent)
            answer = await attempt(endpoint, remaining, sent)
            _answered(status(answer))
            return answer

    return traced


def attempts_blocking(attempt: Callable[[Endpoint, float, list[tuple[str, Any]]], T],
                      metadata: list[tuple[str, Any]], variant: VariantRoute,
                      status: Callable[[T], int | str]) -> Callable[[Endpoint, float], T]:
    """:func:`attempts` for the gRPC edge's threads (the edge's route span is current in
    the thread)."""
    number = 0

    def traced(endpoint: Endpoint, remaining: float) -> T:
        nonlocal number
        number += 1
        with tracing.span("upstream attempt", kind="client",
                          attributes=_attributes(variant, endpoint, number)):
            sent = list(metadata)
            tracing.inject(sent)
            answer = attempt(endpoint, remaining, sent)
            _answered(status(answer))
            return answer

    return traced


def _attributes(variant: VariantRoute, endpoint: Endpoint, number: int) -> dict[str, Any]:
    return {"turnout.service": variant.service, "turnout.variant": variant.name,
            "turnout.revision": variant.spec.revision or "", "turnout.attempt": number,
            "server.address": endpoint.address}


def _answered(status: int | str) -> None:
    if isinstance(status, int):
        tracing.annotate(status_code=status)
        if status >= 500:
            tracing.failed(status)
    else:
        tracing.annotate(grpc_status=status)
        if status != "OK":
            tracing.failed(status)
