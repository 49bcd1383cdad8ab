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
import contextvars
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
        with tracing.span("route", context=tracing.extract(context.invocation_metadata() or ()),
                          kind="server", attributes={"rpc.system": "grpc", "rpc.service": SERVICE,
                                                     "rpc.method": rpc}):
            try:
                return self._routed(rpc, method, request, context)
            except Exception:
                code = getattr(getattr(context, "code", lambda: None)(), "name", "UNKNOWN")
                tracing.annotate(grpc_status=code)
                tracing.failed(code)
                raise

    def _routed(self, rpc: str, method: str, request: bytes,
                context: grpc.ServicerContext) -> bytes:
        started = time.perf_counter()
        service_label = variant_label = ""
        try:
            table = self.router.table
            try:
                model, version = read_name_version(request)
            except ValueError as exc:
                raise InvalidInput(f"malformed {rpc} request: {exc}") from None
            if self.authenticator is not None:
                check_target(table, model, lambda: self.authenticator.from_metadata(  # type: ignore[union-attr]
                    context.invocation_metadata()))
            if rpc == "ModelInfer" and model in table.graphs:
                return self._graph(table.graphs[model], request, context)
            service = table.service(model)
            service_label = service.name
            metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                        if not k.startswith(":") and k not in _DROP_METADATA]
            headers = {k: v for k, v in metadata if isinstance(v, str)}
            variant, rule = table.pick(service, headers)
            variant_label = variant.name
            if tracing.ON:
                tracing.annotate(service=service.name, variant=variant.name,
                                 revision=variant.spec.revision, rule=rule)
            use_http = rpc == "ModelInfer" and via_http(service, variant)
            if not (variant.http if use_http else variant.grpc).ready:
                service, variant = self._hold(rpc, service, variant, headers, context)
                service_label, variant_label = service.name, variant.name
                use_http = rpc == "ModelInfer" and via_http(service, variant)
            logger = service.spec.logger if rpc == "ModelInfer" else None
            logged = None if logger is None else self.router.payloads.grpc(
                logger, service=service.name, variant=variant.name,
                revision=variant.spec.revision, metadata=metadata, body=request)
            answer = self._forward(rpc, method, service, variant, use_http, request, version,
                                   metadata, context)
        except TurnoutError as err:
            if isinstance(err, Overloaded):
                self.router.metrics.rejected.labels(service_label, variant_label).inc()
            self._count(service_label, variant_label, err.grpc_code, started)
            context.abort(grpc.StatusCode[err.grpc_code], str(err))
            raise AssertionError("abort returned") from None
        self._count(service_label, variant_label, answer.code.name, started)
        # Trailing metadata rides with the status; initial metadata would be a separate send
        # (py-spy: a sixth of the gRPC hop's CPU).
        context.set_trailing_metadata(((VARIANT_HEADER, variant.name),))
        if answer.code != grpc.StatusCode.OK:
            context.abort(answer.code, answer.details)
        body = with_name_version(answer.body, service.name, None) \
            if variant.renamed and rpc in _RENAME_RESPONSE else answer.body
        if logged is not None:
            self.router.payloads.grpc_response(logged, body)
        return body

    def _graph(self, graph: Graph, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Run the graph on the event loop while this thread waits for its outcome."""
        outcome = asyncio.run_coroutine_threadsafe(self.graphs.serve(
            graph, request, list(context.invocation_metadata() or ()), context.time_remaining()),
            self.loop).result()
        context.set_trailing_metadata(outcome.trailing)
        if outcome.failure is not None:
            context.abort(*outcome.failure)
        return outcome.body

    def _hold(self, rpc: str, service: ServiceRoute, variant: VariantRoute,
              headers: dict[str, str], context: grpc.ServicerContext
              ) -> tuple[ServiceRoute, VariantRoute]:
        """Block this thread until ``variant`` has a ready endpoint (router/hold.py), within
        the client's deadline; a cancelled call stops waiting."""
        def pool_of(service: ServiceRoute, variant: VariantRoute) -> Pool:
            use_http = rpc == "ModelInfer" and via_http(service, variant)
            return variant.http if use_http else variant.grpc

        def watch(waiter: Waiter) -> None:
            if not context.add_callback(waiter.cancel):  # the call has already ended
                waiter.cancel()

        remaining = context.time_remaining()
        return self.router.holds.hold_blocking(
            service, variant, pool_of=pool_of, headers=headers.copy, watch=watch,
            deadline=None if remaining is None else time.monotonic() + remaining)

    def _forward(self, rpc: str, method: str, service: ServiceRoute, variant: VariantRoute,
                 use_http: bool, request: bytes, version: str, metadata: list[tuple[str, Any]],
                 context: grpc.ServicerContext) -> GrpcAnswer:
        budget = service.upstream.timeout_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        deadline = time.monotonic() + budget
        variant.gate.enter(f"variant {variant.name} of {service.name}")
        primary: PrimaryAnswer[GrpcAnswer] | None = None
        try:
            if rpc == "ModelInfer" and service.mirrors:
                primary = PrimaryAnswer(self.loop)
                self.loop.call_soon_threadsafe(self._mirror, service, variant, primary, method,
                                               request, version, metadata, context=
                                               contextvars.copy_context() if tracing.ON else None)
            if use_http:
                answer = call_variant_blocking(
                    variant=variant, pool=variant.http, max_attempts=service.upstream.max_attempts,
                    deadline=deadline, attempt=protobuf_http_attempt(
                        self.router, infer_path(variant, version), request,
                        protobuf_http_headers(metadata)) if not tracing.ON else
                    traced.attempts_blocking(
                        lambda e, r, sent: protobuf_http_attempt(
                            self.router, infer_path(variant, version), request, sent)(e, r),
                        protobuf_http_headers(metadata), variant, _http_status),
                    classify=classify_protobuf_http, metrics=self.router.metrics)
            else:
                message = message_for(variant, request, version)
                answer = call_variant_blocking(
                    variant=variant, pool=variant.grpc, max_attempts=service.upstream.max_attempts,
                    deadline=deadline, attempt=blocking_attempt(
                        self.router, method, message, metadata) if not tracing.ON else
                    traced.attempts_blocking(
                        lambda e, r, sent: blocking_attempt(self.router, method, message,
                                                            sent)(e, r),
                        metadata, variant, _code_name),
                    classify=classify_grpc, metrics=self.router.metrics)
        except BaseException:
            if primary is not None:
                primary.set_threadsafe(None)
            raise
        finally:
            variant.gate.leave()
        if primary is not None:
            primary.set_threadsafe(answer)
        return answer

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


def _http_status(answer: GrpcAnswer) -> int:
    return answer.http_status


def _code_name(answer: GrpcAnswer) -> str:
    return answer.code.name


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
