"""The gRPC edge on the event loop (serving/transport/h2grpc): ``--grpc-engine loop``.

Every RPC is the asyncio servicer's own code (serving/server/grpc/servicer.py), run on the
server's loop like REST; ModelInfer for a model that predicts inline is answered in the same
loop step that read it (decode, predict, encode, write), as the REST fast path does, and for a
batched model from its batch's callback (``DataPlane.infer_soon`` and the transport's
``Later``: no task, coroutine or extra loop step per call). Health and reflection are grpc_health's and
grpc_reflection's asyncio servicers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from serving.protocol import codec_grpc as codec
from serving.protocol import proto
from serving.protocol.codec_grpc import Pb
from serving.protocol.errors import TurnoutError
from serving.protocol.types import InferenceResponse
from serving.server.dataplane import DataPlane, current_request_id
from serving.server.grpc.server import HEALTH_SERVICES, SetServing, _HealthServicer, reflection_pool
from serving.server.grpc.servicer import (
    PROTOCOL,
    InferenceServicer,
    grpc_server_span,
    infer_inline,
)
from serving.server.settings import ServerSettings
from serving.transport import tracing
from serving.transport.h2grpc import GrpcServer
from serving.transport.h2grpc.calls import AbortError, Later

log = logging.getLogger("turnout.grpc")


class LoopServicer:
    """ModelInfer answered inline where the model allows, else by the asyncio servicer."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane
        self._async = InferenceServicer(dataplane)

    def ModelInfer(self, request: Pb, context: Any) -> Any:
        """A response, or a future or coroutine for the transport to await."""
        dataplane = self._dataplane
        if type(request) is codec.Undecodable:
            return self._async.ModelInfer(request, context)
        if dataplane.runs_blocking(request.model_name, request.model_version or None):
            if tracing.ON:
                with grpc_server_span(request, context.invocation_metadata()):
                    return infer_inline(dataplane, request, context)
            return infer_inline(dataplane, request, context)
        if tracing.ON:
            return self._async.ModelInfer(request, context)
        try:
            internal, raw = self._async.decode(request, context)
            later = Later()
            batch = dataplane.infer_soon(internal, protocol=PROTOCOL,
                                         then=functools.partial(_settle, later, raw))
        except Exception as exc:
            raise _status(exc) from None
        if batch is None:  # not batched: the data plane's coroutine
            return self._async.infer_decoded(internal, raw, context)
        later._on_cancel = batch.cancel  # a call that ends first gives up its batch place
        return later


def _settle(later: Later, raw: bool, outcome: InferenceResponse | BaseException) -> None:
    """The data plane's answer to a call: the encoded response, or its status."""
    if not later.wanted():
        return  # the call ended first
    if isinstance(outcome, InferenceResponse):
        try:
            response = codec.encode_response(outcome, raw=raw)
        except Exception as exc:
            later.fail(_status(exc))
        else:
            later.answer(response)
    else:  # (a cancelled batch place: only after the call ended, so never here)
        later.fail(_status(outcome))


def _status(exc: BaseException) -> AbortError:
    """What ends a call for ``exc``: a TurnoutError's mapped status and message, else INTERNAL
    with the request id (the traceback goes to the log only), as the servicer's ``_abort``."""
    if isinstance(exc, TurnoutError):
        return AbortError(grpc.StatusCode[exc.grpc_code], str(exc))
    if isinstance(exc, AbortError):
        return exc
    rid = current_request_id()
    log.error("unexpected error in gRPC ModelInfer (request id %s)", rid,
              exc_info=(type(exc), exc, exc.__traceback__))
    return AbortError(grpc.StatusCode.INTERNAL, "internal server error in ModelInfer "
                      f"(request id {rid}; the server log has the details)")


def build_loop_grpc_server(dataplane: DataPlane, settings: ServerSettings, *,
                           interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
                           ) -> tuple[GrpcServer, SetServing]:
    """An event-loop gRPC server (not yet listening: ``await server.start(...)``) and its
    health switch; the same services, limits and interceptors as the grpcio engines."""
    limit = settings.max_payload_bytes
    server = GrpcServer(interceptors=interceptors, max_receive=limit, max_send=limit,
                        max_header_bytes=settings.max_header_bytes,
                        handshake_seconds=settings.header_timeout_seconds,
                        idle_seconds=settings.grpc_idle_seconds)
    servicer = InferenceServicer(dataplane)
    fast = LoopServicer(dataplane)
    handlers = {}
    for name, (request_cls, response_cls) in proto.METHODS.items():
        behaviour = fast.ModelInfer if name == "ModelInfer" else getattr(servicer, name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=codec.request_parser(name, request_cls),
            response_serializer=codec.response_serializer(name, response_cls))
    server.add_registered_method_handlers(proto.SERVICE_NAME, handlers)
    health_servicer = _HealthServicer(HEALTH_SERVICES)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (proto.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            pool=reflection_pool()), server)
    return server, health_servicer.set_serving
