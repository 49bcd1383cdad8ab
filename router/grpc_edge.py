"""The router's gRPC edge: ``inference.GRPCInferenceService`` proxied at the message level.

A generic handler receives every RPC as bytes (no deserializer). For ModelInfer, ModelReady
and ModelMetadata the router reads fields 1/2 (model name, version) from the wire bytes,
picks a variant with the same rules as REST (gRPC metadata plays the part of headers),
rewrites the name/version by appending fields when the variant needs it, and forwards the
bytes on one HTTP/2 channel per endpoint. Tensors are never decoded on the primary path.
Server-level RPCs (live, ready, metadata) are answered by the router itself; repository RPCs
are administration of one model server and are not proxied. ModelInfer for a graph's name is
handed to ``graph_grpc.py``, whose steps call variants through :func:`grpc_attempt` as well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from serving.protocol import proto
from serving.protocol.errors import InvalidInput, Overloaded, TurnoutError

from .balance import Endpoint
from .client import UpstreamError
from .compare import Comparison, compare_outputs, grpc_outputs
from .core import Router
from .forward import Verdict, call_variant
from .http_util import VARIANT_HEADER
from .rewrite import read_name_version, with_name_version
from .shadow import PrimaryAnswer
from .table import ServiceRoute, VariantRoute

log = logging.getLogger("turnout.router.grpc")

SERVICE = "inference.GRPCInferenceService"
_ROUTED = frozenset({"ModelInfer", "ModelReady", "ModelMetadata"})
_RENAME_RESPONSE = frozenset({"ModelInfer", "ModelMetadata"})  # their field 1 is the model name
_DROP_METADATA = frozenset({"user-agent", "content-type", "te", "grpc-timeout", "grpc-encoding",
                            "grpc-accept-encoding"})


@dataclass(frozen=True, slots=True)
class GrpcAnswer:
    code: grpc.StatusCode
    details: str
    body: bytes


def classify_grpc(answer: GrpcAnswer) -> tuple[Verdict, str]:
    if answer.code == grpc.StatusCode.UNAVAILABLE:
        return "retry", answer.code.name
    return "ok", answer.code.name


Attempt = Callable[[Endpoint, float], Awaitable[GrpcAnswer]]


def grpc_attempt(router: Router, method: str, message: bytes,
                 metadata: Sequence[tuple[str, Any]]) -> Attempt:
    """One call of ``method`` with ``message`` on one endpoint, for :func:`call_variant`.

    A status other than OK is an answer (classified by :func:`classify_grpc`); the upstream's
    DEADLINE_EXCEEDED is a timeout, never retried.
    """
    async def attempt(endpoint: Endpoint, remaining: float) -> GrpcAnswer:
        call = router.channel(endpoint.address).unary_unary(method)
        try:
            body = await call(message, timeout=remaining, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise UpstreamError("timeout", f"{endpoint.address} did not answer within "
                                               f"{remaining:.3g}s ({err.details()})") from None
            return GrpcAnswer(err.code(), err.details() or "", b"")
        return GrpcAnswer(grpc.StatusCode.OK, "", body)
    return attempt


class GrpcEdge(grpc.GenericRpcHandler):
    def __init__(self, router: Router) -> None:
        from .graph_grpc import GrpcGraphs  # builds on this module's calls, so imported late

        self.router = router
        self.graphs = GrpcGraphs(router)
        ready_false = proto.ServerReadyResponse(ready=False).SerializeToString()
        self._local = {
            "ServerLive": lambda: b"\x08\x01",
            "ServerReady": lambda: b"\x08\x01" if router.ready else ready_false,
            "ServerMetadata": lambda: proto.ServerMetadataResponse(
                name="turnout-router", version="0.1.0").SerializeToString(),
        }

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        prefix, _, name = details.method.rpartition("/")  # type: ignore[attr-defined]
        if prefix != "/" + SERVICE:
            return None
        if name in _ROUTED:
            async def routed(request: bytes, context: Any) -> bytes:
                return await self._routed(name, request, context)
            return grpc.unary_unary_rpc_method_handler(routed)
        if name in self._local:
            answer = self._local[name]

            async def local(request: bytes, context: Any) -> bytes:
                return answer()
            return grpc.unary_unary_rpc_method_handler(local)

        async def refused(request: bytes, context: Any) -> bytes:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{name} is not proxied by the router; call the model server")
            raise AssertionError("abort returned")
        return grpc.unary_unary_rpc_method_handler(refused)

    async def _routed(self, rpc: str, request: bytes, context: Any) -> bytes:
        started = time.perf_counter()
        service_label = variant_label = ""
        try:
            table = self.router.table
            try:
                model, version = read_name_version(request)
            except ValueError as exc:
                raise InvalidInput(f"malformed {rpc} request: {exc}") from None
            if rpc == "ModelInfer" and model in table.graphs:
                return await self.graphs.serve(table.graphs[model], request, context)
            service = table.service(model)
            service_label = service.name
            metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                        if not k.startswith(":") and k not in _DROP_METADATA]
            headers = {k: v for k, v in metadata if isinstance(v, str)}
            variant, _ = table.pick(service, headers)
            variant_label = variant.name
            answer = await self._forward(rpc, service, variant, request, version, metadata,
                                         context)
        except TurnoutError as err:
            if isinstance(err, Overloaded):
                self.router.metrics.rejected.labels(service_label, variant_label).inc()
            self._count(service_label, variant_label, err.grpc_code, started)
            await context.abort(grpc.StatusCode[err.grpc_code], str(err))
            raise AssertionError("abort returned") from None
        self._count(service_label, variant_label, answer.code.name, started)
        # Trailing metadata rides with the status; initial metadata would be a separate send
        # (py-spy: a sixth of the gRPC hop's CPU).
        context.set_trailing_metadata(((VARIANT_HEADER, variant.name),))
        if answer.code != grpc.StatusCode.OK:
            await context.abort(answer.code, answer.details)
        if variant.renamed and rpc in _RENAME_RESPONSE:
            return with_name_version(answer.body, service.name, None)
        return answer.body

    async def _forward(self, rpc: str, service: ServiceRoute, variant: VariantRoute,
                       request: bytes, version: str, metadata: list[tuple[str, Any]],
                       context: Any) -> GrpcAnswer:
        method = f"/{SERVICE}/{rpc}"
        budget = service.upstream.timeout_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        deadline = time.monotonic() + budget

        def message_for(v: VariantRoute) -> bytes:
            pinned = v.spec.version if v.spec.version and v.spec.version != version else None
            return with_name_version(request, v.model if v.renamed else None, pinned)

        def attempt_on(v: VariantRoute) -> Attempt:
            return grpc_attempt(self.router, method, message_for(v), metadata)

        variant.gate.enter(f"variant {variant.name} of {service.name}")
        primary: PrimaryAnswer[GrpcAnswer] | None = None
        try:
            if rpc == "ModelInfer" and service.mirrors:
                primary = PrimaryAnswer()
                self._mirror(service, variant, primary, attempt_on)
            answer = await call_variant(
                variant=variant, pool=variant.grpc, max_attempts=service.upstream.max_attempts,
                deadline=deadline, attempt=attempt_on(variant), classify=classify_grpc,
                metrics=self.router.metrics)
        except BaseException:
            if primary is not None:
                primary.set(None)
            raise
        finally:
            variant.gate.leave()
        if primary is not None:
            primary.set(answer)
        return answer

    def _mirror(self, service: ServiceRoute, serving: VariantRoute,
                primary: PrimaryAnswer[GrpcAnswer], attempt_on: Any) -> None:
        shadower = self.router.shadower
        for mirror, shadow in service.mirrors:
            # A copy to the variant that answers anyway would only agree with itself.
            if shadow.name == serving.name or not shadow.grpc.endpoints \
                    or not shadower.wanted(mirror):
                continue
            deadline = time.monotonic() + mirror.timeout_seconds

            async def send(shadow: VariantRoute = shadow, deadline: float = deadline) -> GrpcAnswer:
                return await call_variant(variant=shadow, pool=shadow.grpc, max_attempts=1,
                                          deadline=deadline, attempt=attempt_on(shadow),
                                          classify=classify_grpc, metrics=self.router.metrics)

            shadower.start(mirror=mirror, variant=shadow, send=send, primary=primary,
                           compare=_compare)

    def _count(self, service: str, variant: str, code: str, started: float) -> None:
        m = self.router.metrics
        m.requests.labels(service, variant, "grpc", code).inc()
        if service:
            m.duration.labels(service, variant, "grpc").observe(time.perf_counter() - started)


def _compare(primary: GrpcAnswer, shadow: GrpcAnswer) -> Comparison | None:
    if primary.code != grpc.StatusCode.OK or shadow.code != grpc.StatusCode.OK:
        return None
    return compare_outputs(grpc_outputs(primary.body), grpc_outputs(shadow.body))


async def build_grpc_server(router: Router, *, host: str, port: int,
                            max_payload_bytes: int) -> grpc.aio.Server:
    """The public gRPC server with the proxy and ``grpc.health.v1``; not started yet."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_payload_bytes),
        ("grpc.max_send_message_length", max_payload_bytes),
    ])
    server.add_generic_rpc_handlers((GrpcEdge(router),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"{host}:{port}")
    return server
