"""A lean keep-alive HTTP/1.1 client for the router's upstream hop: asyncio protocols + httptools.

The router forwards small request bodies to model servers it knows speak HTTP/1.1 with
Content-Length; it needs no redirects, cookies, decompression or proxies. py-spy showed
aiohttp's general-purpose machinery (request/response objects, timers, stream readers) at
about a fifth of the router's CPU, so this client does only what the hop needs: one pooled
connection per in-flight request, the request written in one ``write``, the response parsed
by httptools (the parser uvicorn uses), the deadline as one loop timer.

A connection reused from the pool may have been closed by the server meanwhile; when such a
connection dies before any byte of the answer arrives, the request is repeated once on a new
connection (inference requests have no side effects), as browsers and aiohttp do.

``https://`` upstreams are reached over TLS (the loop's own TLS transport, verified with the
router's upstream CA settings: ``serving/transport/tls.py``); the choice is made once per
address, so plain ``http://`` requests take exactly the path they took before.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from urllib.parse import urlsplit

import httptools

from router.client import UpstreamError, UpstreamResponse
from serving.transport.tls import ClientTls

_HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding",
                         "keep-alive", "te", "upgrade"})


class _Connection(asyncio.Protocol):
    """One upstream connection; answers one request at a time."""

    __slots__ = ("transport", "parser", "waiter", "status", "headers", "body", "received",
                 "keep_alive", "closed", "head_only")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.closed = False
        self._reset_message()

    def _reset_message(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.received = False
        self.keep_alive = True
        self.head_only = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("reset", f"malformed HTTP answer from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(UpstreamError("reset", "upstream closed the connection before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:  # a HEAD answer has no body whatever its Content-Length says
            self.keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            waiter.set_result(UpstreamResponse(self.status, self.headers, body))

    # used by the client
    def send(self, data: bytes, waiter: asyncio.Future[UpstreamResponse], *,
             head_only: bool = False) -> None:
        self._reset_message()
        self.head_only = head_only
        self.waiter = waiter
        assert self.transport is not None
        self.transport.write(data)

    def _fail(self, error: UpstreamError) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


_PoolKey = tuple[str, int] | tuple[str, int, bool]
# host, port, host header, pool key, TLS context (None: plain)
_Target = tuple[str, int, bytes, _PoolKey, ssl.SSLContext | None]


class H1Client:
    """Pooled HTTP/1.1 upstream client (implements :class:`router.client.HttpClient`)."""

    def __init__(self, *, connect_timeout: float = 2.0, per_host: int = 256,
                 tls: ClientTls | None = None) -> None:
        self._connect_timeout = connect_timeout
        self._max_idle = per_host
        self._idle: dict[tuple[str, int] | tuple[str, int, bool], deque[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._tls_targets: dict[str, _Target] = {}
        self._tls = tls or ClientTls()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the client works on, looked up once: ``asyncio.get_running_loop()`` makes a
        getpid system call each time (its fork check), ~4% of the router's CPU at two a request.
        Its connections belong to that loop anyway."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _target(self, url: str) -> tuple[_Target, str]:
        """(host, port, host header, pool key, TLS context) of ``url`` and its path; base
        addresses repeat, so cached."""
        scheme_host, sep, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        targets = self._targets if scheme_host == "http" else self._tls_targets
        base = targets.get(authority)
        if base is None:
            if scheme_host not in ("http", "https"):
                raise UpstreamError("connect", f"only http:// and https:// upstreams are "
                                               f"supported: {url}")
            parts = urlsplit(url)
            if parts.hostname is None:
                raise UpstreamError("connect", f"no host in upstream URL {url!r}")
            tls = scheme_host == "https"
            port = parts.port or (443 if tls else 80)
            context = self._tls_context(url) if tls else None
            base = (parts.hostname, port, authority.encode("latin-1"),
                    (parts.hostname, port, True) if tls else (parts.hostname, port), context)
            if len(targets) < 4096:
                targets[authority] = base
        return base, slash + path

    def _tls_context(self, url: str) -> ssl.SSLContext:
        try:
            return self._tls.context
        except ValueError as exc:  # TlsError: the CA or client certificate files
            raise UpstreamError("connect", f"cannot reach {url}: {exc}") from None

    async def request(self, method: str, url: str, *, headers: list[tuple[str, str]],
                      body: bytes, timeout: float) -> UpstreamResponse:
        (host, port, host_header, key, context), path = self._target(url)
        head = [f"{method} {path} HTTP/1.1\r\nhost: ".encode("latin-1"), host_header,
                b"\r\ncontent-length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        head.append(body)
        data = b"".join(head)
        loop = self._running_loop()
        deadline = loop.time() + timeout
        reused = self._take_idle(key)
        if reused is not None:
            try:
                return await self._exchange(reused, key, data, deadline, url, timeout, method)
            except UpstreamError as err:
                if err.kind != "reset" or reused.received:
                    raise
                # A pooled connection the server had closed: repeat once on a fresh one.
        conn = await self._connect(host, port, url, deadline, context)
        return await self._exchange(conn, key, data, deadline, url, timeout, method)

    def _take_idle(self, key: _PoolKey) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, host: str, port: int, url: str, deadline: float,
                       context: ssl.SSLContext | None = None) -> _Connection:
        loop = asyncio.get_running_loop()
        budget = min(self._connect_timeout, deadline - loop.time())
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                if context is None:
                    _, conn = await loop.create_connection(_Connection, host, port)
                else:  # the handshake counts against the connect budget
                    _, conn = await loop.create_connection(_Connection, host, port, ssl=context,
                                                           server_hostname=host)
        except TimeoutError:
            raise UpstreamError("connect", f"cannot connect to {url}: timed out") from None
        except ssl.SSLError as exc:  # before OSError: SSLError is one
            raise UpstreamError("connect", f"TLS handshake with {url} failed: "
                                           f"{exc.reason or exc}") from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {url}: "
                                           f"{exc.strerror or exc}") from None
        return conn

    async def _exchange(self, conn: _Connection, key: _PoolKey, data: bytes,
                        deadline: float, url: str, timeout: float, method: str
                        ) -> UpstreamResponse:
        loop = self._running_loop()
        waiter: asyncio.Future[UpstreamResponse] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter, url, timeout)
        conn.send(data, waiter, head_only=method == "HEAD")
        try:
            response = await waiter
        except BaseException:
            conn.close()  # a late or partial answer must never reach the next request
            raise
        finally:
            timer.cancel()
        if conn.keep_alive and not conn.closed:
            idle = self._idle.setdefault(key, deque())
            if len(idle) < self._max_idle:
                idle.append(conn)
                return response
        conn.close()
        return response

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def _expire(waiter: asyncio.Future[UpstreamResponse], url: str, timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamError("timeout", f"{url} did not answer within "
                                                      f"{timeout:.3g}s"))
