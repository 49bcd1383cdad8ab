"""The one interface through which the router talks HTTP to upstreams.

Tests inject a fake :class:`HttpClient`; production uses :class:`router.h1client.H1Client`, a
keep-alive pool per endpoint built for this hop (see ``loadtests/router_hop/RESULTS.md`` for why
not aiohttp or httpx). Failures are classified once, here, into the three kinds
the retry logic needs: the request never reached the upstream (``connect``), the connection
died before an answer (``reset``), or the answer took too long (``timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FailureKind = Literal["connect", "reset", "timeout"]


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class UpstreamError(Exception):
    """An upstream call that produced no HTTP answer."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind


class HttpClient(Protocol):
    async def request(self, method: str, url: str, *, headers: list[tuple[str, str]],
                      body: bytes, timeout: float) -> UpstreamResponse: ...

    async def close(self) -> None: ...
