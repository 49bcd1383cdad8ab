"""A gRPC server on the asyncio event loop (HTTP/2 in serving/transport/h2grpc/connection.py).

It takes what a ``grpc.aio.Server`` takes — generic and registered method handlers, aio server
interceptors — so grpc_health's and grpc_reflection's own registration functions and Turnout's
servicers work on it unchanged; the handlers run on the loop, never on threads.

Connections are bounded in time as well as size: one that has not sent the HTTP/2 preface
within ``handshake_seconds`` is closed (a client that connects and says nothing holds a socket
for ever otherwise), and one with no open stream for ``idle_seconds`` gets a GOAWAY (NO_ERROR,
so clients reconnect on their next call) and is closed. One sweep task checks every connection
a few times per period; nothing is timed per request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from serving.transport.h2grpc.calls import Call
from serving.transport.h2grpc.connection import Connection, Stream

log = logging.getLogger("turnout.grpc.h2")


class GrpcServer:
    """Unary and streaming RPCs over cleartext HTTP/2 (prior knowledge) or TLS with ALPN h2."""

    def __init__(self, *, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                 max_receive: int = 4 * 1024 * 1024, max_send: int = 4 * 1024 * 1024,
                 max_header_bytes: int = 16 * 1024, max_streams: int = 1024,
                 handshake_seconds: float = 10.0, idle_seconds: float = 300.0) -> None:
        self.interceptors = tuple(interceptors)
        self.has_interceptors = bool(self.interceptors)
        self.max_receive, self.max_send = max_receive, max_send
        self.max_header_bytes, self.max_streams = max_header_bytes, max_streams
        self.handshake_seconds = handshake_seconds
        self.idle_seconds = idle_seconds  # 0: never closed for idleness
        self._sweeper: asyncio.Task[None] | None = None
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._cache: dict[str, grpc.RpcMethodHandler] = {}
        self.unknown: set[str] = set()  # methods known not to exist (bounded)
        self.connections: set[Connection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    # -- what grpc's registration helpers call ----------------------------------------------
    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)
        self._cache.clear()

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler
        self._cache.clear()

    # -- handler lookup ---------------------------------------------------------------------
    def _find(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._registered.get(details.method)  # type: ignore[attr-defined]
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    def cached_handler(self, method: str) -> grpc.RpcMethodHandler | None:
        """The handler of ``method`` without awaiting anything: known when no interceptor
        decides per call."""
        if self.has_interceptors:
            return None
        return self._cache.get(method)

    async def lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        async def find(found: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return self._find(found)

        continuation = find
        for interceptor in reversed(self.interceptors):
            continuation = _chained(interceptor, continuation)
        handler = await continuation(details)
        method = details.method  # type: ignore[attr-defined]
        if not self.has_interceptors:
            if handler is not None:
                self._cache[method] = handler
            elif len(self.unknown) < 1024:
                self.unknown.add(method)
        return handler

    def new_call(self, conn: Connection, stream: Stream,
                 headers: list[tuple[bytes, bytes]]) -> Call:
        return Call(self, conn, stream, headers)

    # -- listening --------------------------------------------------------------------------
    async def start(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                    reuse_port: bool = True) -> int:
        """Listen on ``host:port`` (0: any free port); returns the port."""
        self.loop = asyncio.get_running_loop()
        for method in list(self._registered):  # no lookup task for the registered ones
            if not self.has_interceptors:
                self._cache[method] = self._registered[method]
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = await self.loop.create_server(lambda: Connection(self), sock=sock,
                                               ssl=ssl_context, backlog=1024)
        self._servers.append(server)
        if self._sweeper is None and (self.handshake_seconds > 0 or self.idle_seconds > 0):
            self._sweeper = self.loop.create_task(self._sweep_forever())
        return int(sock.getsockname()[1])

    # -- bounded connection lifetimes -------------------------------------------------------
    async def _sweep_forever(self) -> None:
        limits = [s for s in (self.handshake_seconds, self.idle_seconds) if s > 0]
        period = min(max(min(limits) / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            self.sweep(self.loop.time())

    def sweep(self, now: float) -> None:
        """Close connections past their handshake or idle time. Idleness is seen without a
        clock per request: no open stream, and no new stream since the sweep that first saw
        none (``last_stream`` unchanged), for ``idle_seconds``."""
        for conn in list(self.connections):
            if conn.closed:
                continue
            if conn.preface:
                if 0 < self.handshake_seconds <= now - conn.opened_at:
                    conn.expire(f"no HTTP/2 preface within {self.handshake_seconds:g} s")
                continue
            if conn.streams or not self.idle_seconds:
                conn.idle_mark = -1
                continue
            if conn.idle_mark != conn.last_stream:
                conn.idle_mark, conn.idle_since = conn.last_stream, now
            elif now - conn.idle_since >= self.idle_seconds:
                conn.go_away(debug=b"max_idle")

    async def stop(self, grace: float | None) -> None:
        """Refuse new connections and streams; wait up to ``grace`` seconds for open calls,
        then close every connection."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.go_away()
        deadline = self.loop.time() + (grace or 0.0)
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
            conn.connection_lost(None)


def _chained(interceptor: grpc.aio.ServerInterceptor, continuation: Any) -> Any:
    async def step(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return await interceptor.intercept_service(continuation, details)

    return step
