"""The router's gRPC edge: ``inference.GRPCInferenceService`` proxied at the message level.

A generic handler receives every RPC as bytes (no deserializer). For ModelInfer, ModelReady
and ModelMetadata the router reads fields 1/2 (model name, version) from the wire bytes,
picks a variant with the same rules as REST (gRPC metadata plays the part of headers), and
forwards the bytes to an endpoint by one of the hops in ``grpc_hops.py`` (protobuf over HTTP to
Turnout model servers, else gRPC with fields 1/2 rewritten where the variant needs it). Tensors
are never decoded on the primary path.
Server-level RPCs (live, ready, metadata) are answered by the router itself; repository RPCs
are administration of one model server and are not proxied.

Concurrency: the edge is grpcio's threaded server, and a handler thread waits on its upstream
call (its own HTTP/1.1 socket, or a threaded-client gRPC channel). py-spy put ~80% of a grpc.aio edge's CPU in
grpc.aio's own machinery; threads handle about twice the calls per core
(``loadtests/router_hop/RESULTS.md``). Routing state shared with the event loop is locked
where it is updated (``balance.py``, ``table.py``). What needs the loop goes there: ModelInfer
for a graph's name runs ``graph_grpc.py`` on the loop (its steps use the loop's grpc.aio
channels) while the thread waits, and shadow copies are started there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc

from router import traced
from router.access import check_target
from router.balance import Pool
from router.compare import Comparison, compare_outputs, grpc_outputs
from router.core import Router
from router.disagreements import MirrorOrigin
from router.forward import call_variant, call_variant_blocking
from router.grpc_hops import (
    Attempt,
    GrpcAnswer,
    blocking_attempt,
    classify_grpc,
    classify_protobuf_http,
    grpc_attempt,
    infer_path,
    message_for,
    protobuf_http_attempt,
    protobuf_http_attempt_async,
    protobuf_http_headers,
    via_http,
)
from router.hold import Waiter
from router.http_util import VARIANT_HEADER
from router.rewrite import read_name_version, with_name_version
from router.shadow import PrimaryAnswer
from router.table import ServiceRoute, VariantRoute
from serving.protocol import proto
from serving.protocol.errors import InvalidInput, Overloaded, TurnoutError
from serving.spec.routes import Graph
from serving.transport import tracing
from serving.transport.auth import Authenticator
from serving.transport.h2grpc.calls import AbortError

log = logging.getLogger("turnout.router.grpc")

SERVICE = "inference.GRPCInferenceService"
_ROUTED = frozenset({"ModelInfer", "ModelReady", "ModelMetadata"})
_RENAME_RESPONSE = frozenset({"ModelInfer", "ModelMetadata"})  # their field 1 is the model name
_DROP_METADATA = frozenset({"user-agent", "content-type", "te", "grpc-timeout", "grpc-encoding",
                            "grpc-accept-encoding"})


class GrpcEdge(grpc.GenericRpcHandler):
    """The generic handler; its methods run on grpcio's handler threads."""

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop, *,
                 hold_threads: int = 0, authenticator: Authenticator | None = None) -> None:
        from router.graph_grpc import GrpcGraphs  # builds on this module's calls, so imported late

        # With authentication on, the server's interceptor has checked the caller's credential
        # and scope; services that name their principals are checked here, by model name.
        self.authenticator = authenticator
        self.router = router
        self.loop = loop
        # A held call blocks its handler thread: at most this many hold at once (0: no limit).
        router.holds.max_threads = hold_threads
        self.graphs = GrpcGraphs(router)
        ready_false = proto.ServerReadyResponse(ready=False).SerializeToString()
        server_metadata = proto.ServerMetadataResponse(
            name="turnout-router", version="0.1.0").SerializeToString()
        local: dict[str, Callable[[], bytes]] = {
            "ServerLive": lambda: b"\x08\x01",
            "ServerReady": lambda: b"\x08\x01" if router.ready else ready_false,
            "ServerMetadata": lambda: server_metadata,
        }
        # grpcio asks for a handler on every call: build each once.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        for rpc in _ROUTED:
            self._handlers[rpc] = grpc.unary_unary_rpc_method_handler(self._routed_handler(rpc))
        for rpc, answer in local.items():
            self._handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                lambda request, context, answer=answer: answer())

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        prefix, _, name = details.method.rpartition("/")  # type: ignore[attr-defined]
        if prefix != "/" + SERVICE:
            return None
        handler = self._handlers.get(name)
        if handler is not None:
            return handler

        def refused(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          f"{name} is not proxied by the router; call the model server")
            raise AssertionError("abort returned")
        return grpc.unary_unary_rpc_method_handler(refused)

    def _routed_handler(self, rpc: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        method = f"/{SERVICE}/{rpc}"

        def routed(request: bytes, context: grpc.ServicerContext) -> bytes:
            if tracing.ON:
                return self._traced(rpc, method, request, context)
            return self._routed(rpc, method, request, context)
        return routed

    def _traced(self, rpc: str, method: str, request: bytes,
                context: grpc.ServicerContext) -> bytes:
        """:meth:`_routed` in a ``route`` span continuing the ``traceparent`` metadata."""
        with route_span(rpc, context):
            return self._routed(rpc, method, request, context)

    def _routed(self, rpc: str, method: str, request: bytes,
                context: grpc.ServicerContext) -> bytes:
        call = RoutedCall(rpc, method, request)
        try:
            graph = self._begin(call, context)
            if graph is not None:
                return self._graph(graph, request, context)
            if self._must_hold(call):
                self._rehome(call, *self._hold(call, context))
            self._log(call)
            answer = self._forward(call, context)
        except TurnoutError as err:
            self._refuse(call, err, context)
        return self._answer(call, answer, context)

    # -- the steps both edges share (synchronous, no waiting) -------------------------------
    def _begin(self, call: RoutedCall, context: Any) -> Graph | None:
        """Read the model, authorise, pick the service and variant: the graph instead when
        ModelInfer names one."""
        table = self.router.table
        try:
            model, call.version = read_name_version(call.request)
        except ValueError as exc:
            raise InvalidInput(f"malformed {call.rpc} request: {exc}") from None
        if self.authenticator is not None:
            check_target(table, model, lambda: self.authenticator.from_metadata(  # type: ignore[union-attr]
                context.invocation_metadata()))
        if call.rpc == "ModelInfer" and model in table.graphs:
            return table.graphs[model]
        service = call.service = table.service(model)
        call.metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                         if not k.startswith(":") and k not in _DROP_METADATA]
        call.headers = {k: v for k, v in call.metadata if isinstance(v, str)}
        variant, rule = table.pick(service, call.headers)
        if tracing.ON:
            tracing.annotate(service=service.name, variant=variant.name,
                             revision=variant.spec.revision, rule=rule)
        self._rehome(call, service, variant)
        return None

    @staticmethod
    def _rehome(call: RoutedCall, service: ServiceRoute, variant: VariantRoute) -> None:
        call.service, call.variant = service, variant
        call.use_http = call.rpc == "ModelInfer" and via_http(service, variant)

    @staticmethod
    def _must_hold(call: RoutedCall) -> bool:
        variant = call.variant
        return not (variant.http if call.use_http else variant.grpc).ready

    @staticmethod
    def _pool_of(rpc: str) -> Callable[[ServiceRoute, VariantRoute], Pool]:
        def pool_of(service: ServiceRoute, variant: VariantRoute) -> Pool:
            use_http = rpc == "ModelInfer" and via_http(service, variant)
            return variant.http if use_http else variant.grpc
        return pool_of

    def _log(self, call: RoutedCall) -> None:
        service = call.service
        logger = service.spec.logger if call.rpc == "ModelInfer" else None
        if logger is not None:
            call.logged = self.router.payloads.grpc(
                logger, service=service.name, variant=call.variant.name,
                revision=call.variant.spec.revision, metadata=call.metadata, body=call.request)

    def _deadline(self, call: RoutedCall, context: Any) -> float:
        budget = call.service.upstream.timeout_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        return time.monotonic() + budget

    def _refuse(self, call: RoutedCall, err: TurnoutError, context: Any) -> NoReturn:
        service, variant = call.labels()
        if isinstance(err, Overloaded):
            self.router.metrics.rejected.labels(service, variant).inc()
        self._count(service, variant, err.grpc_code, call.started)
        context.abort(grpc.StatusCode[err.grpc_code], str(err))
        raise AssertionError("abort returned") from None

    def _answer(self, call: RoutedCall, answer: GrpcAnswer, context: Any) -> bytes:
        service, variant = call.service, call.variant
        self._count(service.name, variant.name, answer.code.name, call.started)
        # Trailing metadata rides with the status; initial metadata would be a separate send
        # (py-spy: a sixth of the gRPC hop's CPU).
        context.set_trailing_metadata(((VARIANT_HEADER, variant.name),))
        if answer.code != grpc.StatusCode.OK:
            context.abort(answer.code, answer.details)
        body = with_name_version(answer.body, service.name, None) \
            if variant.renamed and call.rpc in _RENAME_RESPONSE else answer.body
        if call.logged is not None:
            self.router.payloads.grpc_response(call.logged, body)
        return body

    # -- waiting, on a handler thread --------------------------------------------------------
    def _graph(self, graph: Graph, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Run the graph on the event loop while this thread waits for its outcome."""
        outcome = asyncio.run_coroutine_threadsafe(self.graphs.serve(
            graph, request, list(context.invocation_metadata() or ()), context.time_remaining()),
            self.loop).result()
        context.set_trailing_metadata(outcome.trailing)
        if outcome.failure is not None:
            context.abort(*outcome.failure)
        return outcome.body

    def _hold(self, call: RoutedCall, context: grpc.ServicerContext
              ) -> tuple[ServiceRoute, VariantRoute]:
        """Block this thread until the variant has a ready endpoint (router/hold.py), within
        the client's deadline; a cancelled call stops waiting."""
        def watch(waiter: Waiter) -> None:
            if not context.add_callback(waiter.cancel):  # the call has already ended
                waiter.cancel()

        remaining = context.time_remaining()
        return self.router.holds.hold_blocking(
            call.service, call.variant, pool_of=self._pool_of(call.rpc),
            headers=call.headers.copy, watch=watch,
            deadline=None if remaining is None else time.monotonic() + remaining)

    def _forward(self, call: RoutedCall, context: grpc.ServicerContext) -> GrpcAnswer:
        variant, version, request, metadata = call.variant, call.version, call.request, \
            call.metadata
        deadline = self._deadline(call, context)
        with self._pending(call, on_loop=False) as primary:
            if call.use_http:
                answer = call_variant_blocking(
                    variant=variant, pool=variant.http,
                    max_attempts=call.service.upstream.max_attempts,
                    deadline=deadline, attempt=protobuf_http_attempt(
                        self.router, infer_path(variant, version), request,
                        protobuf_http_headers(metadata)) if not tracing.ON else
                    traced.attempts_blocking(
                        lambda e, r, sent: protobuf_http_attempt(
                            self.router, infer_path(variant, version), request, sent)(e, r),
                        protobuf_http_headers(metadata), variant, http_status),
                    classify=classify_protobuf_http, metrics=self.router.metrics)
            else:
                message = message_for(variant, request, version)
                answer = call_variant_blocking(
                    variant=variant, pool=variant.grpc,
                    max_attempts=call.service.upstream.max_attempts,
                    deadline=deadline, attempt=blocking_attempt(
                        self.router, call.method, message, metadata) if not tracing.ON else
                    traced.attempts_blocking(
                        lambda e, r, sent: blocking_attempt(self.router, call.method, message,
                                                            sent)(e, r),
                        metadata, variant, code_name),
                    classify=classify_grpc, metrics=self.router.metrics)
        self._settle(primary, answer, on_loop=False)
        return answer

    @contextlib.contextmanager
    def _pending(self, call: RoutedCall, *, on_loop: bool
                 ) -> Iterator[PrimaryAnswer[GrpcAnswer] | None]:
        """The variant's pending slot for one forward, and its shadow copies started (on the
        loop: directly, or handed to it from an edge thread) with the primary answer to come;
        a forward that fails tells them so."""
        service, variant = call.service, call.variant
        variant.gate.enter(f"variant {variant.name} of {service.name}")
        primary: PrimaryAnswer[GrpcAnswer] | None = None
        try:
            if call.rpc == "ModelInfer" and service.mirrors:
                primary = PrimaryAnswer(self.loop)
                arguments = (service, variant, primary, call.method, call.request, call.version,
                             call.metadata)
                if on_loop:
                    self._mirror(*arguments)
                else:
                    self.loop.call_soon_threadsafe(self._mirror, *arguments, context=
                                                   contextvars.copy_context()
                                                   if tracing.ON else None)
            yield primary
        except BaseException:
            self._settle(primary, None, on_loop=on_loop)
            raise
        finally:
            variant.gate.leave()

    @staticmethod
    def _settle(primary: PrimaryAnswer[GrpcAnswer] | None, answer: GrpcAnswer | None, *,
                on_loop: bool) -> None:
        if primary is not None:
            (primary.set if on_loop else primary.set_threadsafe)(answer)

    # -- on the event loop --------------------------------------------------------------------
    def _mirror(self, service: ServiceRoute, serving: VariantRoute,
                primary: PrimaryAnswer[GrpcAnswer], method: str, request: bytes, version: str,
                metadata: list[tuple[str, Any]]) -> None:
        """Start the shadow copies of one call; runs on the event loop."""
        shadower = self.router.shadower
        for mirror, shadow in service.mirrors:
            # A copy to the variant that answers anyway would only agree with itself.
            if shadow.name == serving.name or not shadower.wanted(mirror):
                continue
            # The copy takes the hop the shadow variant's servers offer, as a primary call would.
            if via_http(service, shadow):
                pool, classify = shadow.http, classify_protobuf_http
                attempt = protobuf_http_attempt_async(self.router, infer_path(shadow, version),
                                                      request, protobuf_http_headers(metadata))
            elif shadow.grpc.endpoints:
                pool, classify = shadow.grpc, classify_grpc
                attempt = grpc_attempt(self.router, method,
                                       message_for(shadow, request, version), metadata)
            else:  # no endpoint for this copy (the shadow is scaled to zero): never held
                shadower.drop(shadow)
                continue
            deadline = time.monotonic() + mirror.timeout_seconds

            async def send(shadow: VariantRoute = shadow, deadline: float = deadline,
                           attempt: Attempt = attempt, pool: Pool = pool,
                           classify: Any = classify) -> GrpcAnswer:
                return await call_variant(variant=shadow, pool=pool, max_attempts=1,
                                          deadline=deadline, attempt=attempt,
                                          classify=classify, metrics=self.router.metrics)

            shadower.start(mirror=mirror, variant=shadow, send=send, primary=primary,
                           compare=_compare, origin=MirrorOrigin(
                               serving.name, serving.spec.revision, _request_id(metadata),
                               "grpc", request))

    def _count(self, service: str, variant: str, code: str, started: float) -> None:
        m = self.router.metrics
        m.requests.labels(service, variant, "grpc", code).inc()
        if service:
            m.duration.labels(service, variant, "grpc").observe(time.perf_counter() - started)


def http_status(answer: GrpcAnswer) -> int:
    return answer.http_status


def code_name(answer: GrpcAnswer) -> str:
    return answer.code.name


class RoutedCall:
    """One routed RPC as the edge's steps fill it in: what was picked, for counting too."""

    __slots__ = ("rpc", "method", "request", "started", "version", "service", "variant",
                 "metadata", "headers", "use_http", "logged")

    def __init__(self, rpc: str, method: str, request: bytes) -> None:
        self.rpc, self.method, self.request = rpc, method, request
        self.started = time.perf_counter()
        self.version = ""
        self.service: ServiceRoute = None  # type: ignore[assignment]  # set by _begin
        self.variant: VariantRoute = None  # type: ignore[assignment]
        self.metadata: list[tuple[str, Any]] = []
        self.headers: dict[str, str] = {}
        self.use_http = False
        self.logged: Any = None

    def labels(self) -> tuple[str, str]:
        return (self.service.name if self.service is not None else "",
                self.variant.name if self.variant is not None else "")


@contextlib.contextmanager
def route_span(rpc: str, context: Any) -> Iterator[None]:
    """A ``route`` span continuing the call's ``traceparent`` metadata; a failure records the
    call's status (grpcio's context knows it; the loop engine's abort carries it)."""
    with tracing.span("route", context=tracing.extract(context.invocation_metadata() or ()),
                      kind="server", attributes={"rpc.system": "grpc", "rpc.service": SERVICE,
                                                 "rpc.method": rpc}):
        try:
            yield
        except Exception as exc:
            status = getattr(exc, "code", None) if isinstance(exc, AbortError) else \
                getattr(context, "code", lambda: None)()
            code = getattr(status, "name", "UNKNOWN")
            tracing.annotate(grpc_status=code)
            tracing.failed(code)
            raise


def _request_id(metadata: list[tuple[str, Any]]) -> str:
    """The client's ``x-request-id`` metadata, else a fresh id (the gRPC edge mints none)."""
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str):
            return value[:128]
    return uuid.uuid4().hex


def _compare(primary: GrpcAnswer, shadow: GrpcAnswer) -> Comparison | None:
    if primary.code != grpc.StatusCode.OK or shadow.code != grpc.StatusCode.OK:
        return None
    return compare_outputs(grpc_outputs(primary.body), grpc_outputs(shadow.body))


def build_grpc_server(router: Router, *, host: str, port: int, max_payload_bytes: int,
                      threads: int, credentials: grpc.ServerCredentials | None = None,
                      authenticator: Authenticator | None = None) -> grpc.Server:
    """The public gRPC server with the proxy and ``grpc.health.v1``; not started yet.

    Call from the router's event loop (graphs and shadows are handed to it). ``threads`` calls
    are forwarded at once; grpcio queues up to 16 times as many and refuses more with
    RESOURCE_EXHAUSTED at once, so a stalled upstream cannot queue calls without bound.
    ``credentials`` (serving/transport/tls.py) makes the port TLS; with an ``authenticator``
    every call but health and ServerLive/ServerReady needs a credential
    (serving/transport/grpc_auth.py) and services' principals are enforced.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from serving.transport.grpc_auth import AuthInterceptor

    server = grpc.server(ThreadPoolExecutor(threads, thread_name_prefix="grpc-edge"),
                         interceptors=[AuthInterceptor(authenticator)] if authenticator else None,
                         maximum_concurrent_rpcs=16 * threads, options=[
                             ("grpc.max_receive_message_length", max_payload_bytes),
                             ("grpc.max_send_message_length", max_payload_bytes),
                         ])
    server.add_generic_rpc_handlers((GrpcEdge(router, asyncio.get_running_loop(),
                                              hold_threads=max(1, threads // 2),
                                              authenticator=authenticator),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials is not None \
        else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the router's gRPC port {address}")
    return server
