"""The router's gRPC edge on the event loop (``--grpc-engine loop``, the default).

The same proxy as ``grpc_edge.py`` (the routing steps are shared), served by Turnout's HTTP/2
gRPC server on the router's event loop (serving/transport/h2grpc) instead of grpcio's
threads: a call is a task that awaits its hop on the loop's clients — the REST pool's HTTP/1.1
client for protobuf over HTTP, grpc.aio channels for a gRPC hop — as REST requests do, with no
thread hand-off and none of grpcio's per-call cost (which made the router's gRPC hop lose
40-45% against a model server on the loop engine; loadtests/router_hop/RESULTS.md). Graphs,
holds and shadow copies run where they live, on the loop.

Bound: at most ``max_calls`` calls at once (16 x ``--grpc-threads``, the threaded edge's own
bound); more are answered RESOURCE_EXHAUSTED at once, so a stalled upstream cannot make the
router hold calls without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from router import traced
from router.core import Router
from router.forward import call_variant
from router.grpc_edge import SERVICE, GrpcEdge, RoutedCall, code_name, http_status, route_span
from router.grpc_hops import (
    GrpcAnswer,
    classify_grpc,
    classify_protobuf_http,
    grpc_attempt,
    infer_path,
    message_for,
    protobuf_http_attempt_async,
    protobuf_http_headers,
)
from router.hold import Waiter
from router.table import ServiceRoute, VariantRoute
from serving.protocol.errors import TurnoutError
from serving.spec.routes import Graph
from serving.transport import tracing
from serving.transport.auth import Authenticator
from serving.transport.h2grpc import GrpcServer

Handler = Callable[[bytes, Any], Coroutine[Any, Any, bytes]]


class LoopGrpcEdge(GrpcEdge):
    """The generic handler; routed RPCs are coroutines the loop engine runs as tasks."""

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop, *, max_calls: int,
                 authenticator: Authenticator | None = None) -> None:
        super().__init__(router, loop, authenticator=authenticator)
        self.max_calls = max_calls
        self.calls = 0  # routed calls in progress

    def _routed_handler(self, rpc: str) -> Handler:  # type: ignore[override]
        method = f"/{SERVICE}/{rpc}"

        async def routed(request: bytes, context: Any) -> bytes:
            if self.calls >= self.max_calls:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"the router has {self.max_calls} gRPC calls in progress; "
                                    "retry later")
            self.calls += 1
            try:
                if tracing.ON:
                    with route_span(rpc, context):
                        return await self._routed_async(rpc, method, request, context)
                return await self._routed_async(rpc, method, request, context)
            finally:
                self.calls -= 1
        return routed

    async def _routed_async(self, rpc: str, method: str, request: bytes, context: Any) -> bytes:
        call = RoutedCall(rpc, method, request)
        try:
            graph = self._begin(call, context)
            if graph is not None:
                return await self._graph_async(graph, request, context)
            if self._must_hold(call):
                self._rehome(call, *await self._hold_async(call, context))
            self._log(call)
            answer = await self._forward_async(call, context)
        except TurnoutError as err:
            self._refuse(call, err, context)
        return self._answer(call, answer, context)

    async def _graph_async(self, graph: Graph, request: bytes, context: Any) -> bytes:
        outcome = await self.graphs.serve(graph, request, list(context.invocation_metadata()),
                                          context.time_remaining())
        context.set_trailing_metadata(outcome.trailing)
        if outcome.failure is not None:
            context.abort(*outcome.failure)
        return outcome.body

    async def _hold_async(self, call: RoutedCall, context: Any
                          ) -> tuple[ServiceRoute, VariantRoute]:
        """Wait on the loop until the variant has a ready endpoint, within the client's
        deadline; a call the client cancels stops waiting (its task is cancelled)."""
        def watch(waiter: Waiter) -> None:
            context.add_done_callback(lambda _context: waiter.cancel())

        remaining = context.time_remaining()
        return await self.router.holds.hold(
            call.service, call.variant, pool_of=self._pool_of(call.rpc),
            headers=call.headers.copy, watch=watch,
            deadline=None if remaining is None else time.monotonic() + remaining)

    async def _forward_async(self, call: RoutedCall, context: Any) -> GrpcAnswer:
        variant, version, request, metadata = call.variant, call.version, call.request, \
            call.metadata
        attempts = call.service.upstream.max_attempts
        deadline = self._deadline(call, context)
        with self._pending(call, on_loop=True) as primary:
            if call.use_http:
                path = infer_path(variant, version)
                headers = protobuf_http_headers(metadata)
                answer = await call_variant(
                    variant=variant, pool=variant.http, max_attempts=attempts, deadline=deadline,
                    attempt=protobuf_http_attempt_async(self.router, path, request, headers)
                    if not tracing.ON else
                    traced.attempts(lambda e, r, sent: protobuf_http_attempt_async(
                        self.router, path, request, sent)(e, r), headers, variant, http_status),
                    classify=classify_protobuf_http, metrics=self.router.metrics)
            else:
                message = message_for(variant, request, version)
                answer = await call_variant(
                    variant=variant, pool=variant.grpc, max_attempts=attempts, deadline=deadline,
                    attempt=grpc_attempt(self.router, call.method, message, metadata)
                    if not tracing.ON else
                    traced.attempts(lambda e, r, sent: grpc_attempt(
                        self.router, call.method, message, sent)(e, r), metadata, variant,
                        code_name),
                    classify=classify_grpc, metrics=self.router.metrics)
        self._settle(primary, answer, on_loop=True)
        return answer


async def build_loop_grpc_server(router: Router, *, max_payload_bytes: int, max_calls: int,
                                 max_header_bytes: int, handshake_seconds: float,
                                 authenticator: Authenticator | None = None) -> GrpcServer:
    """The public gRPC server on the running loop, with the proxy and ``grpc.health.v1``;
    not listening yet (``await server.start(host, port, ssl_context=...)``). With an
    ``authenticator`` every call but health and ServerLive/ServerReady needs a credential
    (serving/transport/grpc_auth.py) and services' principals are enforced."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from serving.transport.grpc_auth import AioAuthInterceptor

    server = GrpcServer(interceptors=[AioAuthInterceptor(authenticator)] if authenticator
                        else (), max_receive=max_payload_bytes, max_send=max_payload_bytes,
                        max_header_bytes=max_header_bytes, handshake_seconds=handshake_seconds)
    server.add_generic_rpc_handlers((LoopGrpcEdge(router, asyncio.get_running_loop(),
                                                  max_calls=max_calls,
                                                  authenticator=authenticator),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
