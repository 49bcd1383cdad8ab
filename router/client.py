"""The one interface through which the router talks HTTP to upstreams, and its aiohttp backend.

Tests inject a fake :class:`HttpClient`; production uses :class:`AiohttpClient`, which keeps one
keep-alive connection pool per endpoint (aiohttp measured faster than httpx for this hop — see
``loadtests/router_hop/RESULTS.md``). Failures are classified once, here, into the three kinds
the retry logic needs: the request never reached the upstream (``connect``), the connection
died before an answer (``reset``), or the answer took too long (``timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

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


class AiohttpClient:
    """aiohttp session tuned for a proxy: no decompression, no cookie jar, no default headers."""

    def __init__(self, *, connect_timeout: float = 2.0, per_host: int = 256) -> None:
        self._connect_timeout = connect_timeout
        self._per_host = per_host
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily so the session binds to the running loop, not the constructor's.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host,
                                             keepalive_timeout=30, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Content-Type", "Accept", "Accept-Encoding"))
        return self._session

    async def request(self, method: str, url: str, *, headers: list[tuple[str, str]],
                      body: bytes, timeout: float) -> UpstreamResponse:
        session = self._open()
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=self._connect_timeout)
        try:
            async with session.request(method, url, headers=headers, data=body or None,
                                       timeout=limits, allow_redirects=False) as resp:
                payload = await resp.read()
                return UpstreamResponse(resp.status, list(resp.headers.items()), payload)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect", f"cannot connect to {url}: {exc.strerror or exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError) as exc:
            raise UpstreamError("reset", f"connection to {url} dropped: {exc}") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamError("timeout", f"{url} did not answer within {timeout:.3g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("reset", f"{url}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
