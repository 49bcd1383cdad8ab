"""A gRPC server on the asyncio event loop (HTTP/2 in serving/transport/h2grpc/connection.py).

It takes what a ``grpc.aio.Server`` takes — generic and registered method handlers, aio server
interceptors — so grpc_health's and grpc_reflection's own registration functions and Turnout's
servicers work on it unchanged; the handlers run on the loop, never on threads.
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
                 max_header_bytes: int = 16 * 1024, max_streams: int = 1024) -> None:
        self.interceptors = tuple(interceptors)
        self.has_interceptors = bool(self.interceptors)
        self.max_receive, self.max_send = max_receive, max_send
        self.max_header_bytes, self.max_streams = max_header_bytes, max_streams
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
        return int(sock.getsockname()[1])

    async def stop(self, grace: float | None) -> None:
        """Refuse new connections and streams; wait up to ``grace`` seconds for open calls,
        then close every connection."""
        for server in self._servers:
            server.close()
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
