"""The gRPC edge on grpcio's synchronous server: handlers in a small thread pool.

grpc.aio costs several times more per call than grpcio's threaded server (measured here:
~1,000 vs ~1,600 ModelInfer/s on one core for a small ONNX model), so this is the default
engine. ModelInfer for an inline, unbatched model is answered entirely in the gRPC thread
(decode, validate, predict, encode). Everything else — batched or thread-pool models, the
repository RPCs, metadata — is the asyncio servicer's own code, run on the server's event
loop, so both engines share one implementation of every RPC but the hot one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.protocol import codec_grpc as codec
from serving.protocol import proto
from serving.protocol.codec_grpc import Pb
from serving.protocol.errors import TurnoutError
from serving.server.dataplane import DataPlane, current_request_id
from serving.server.grpc.server import HEALTH_SERVICES, bind_address, bind_port, reflection_pool
from serving.server.grpc.servicer import PROTOCOL, InferenceServicer, grpc_server_span
from serving.server.settings import ServerSettings
from serving.transport import tracing

log = logging.getLogger("turnout.grpc")


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details


class _LoopContext:
    """Stands in for an aio context when an async RPC runs on the loop for a sync call;
    ``turnout_metadata`` is the call's metadata where the model reads headers."""

    def __init__(self, metadata: Any = None) -> None:
        self.turnout_metadata = metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


class ThreadedServicer:
    def __init__(self, dataplane: DataPlane, loop: asyncio.AbstractEventLoop) -> None:
        self._dataplane = dataplane
        self._loop = loop
        self._async = InferenceServicer(dataplane)

    def ModelInfer(self, request: Pb, context: grpc.ServicerContext) -> Pb:
        if tracing.ON and type(request) is not codec.Undecodable:
            with grpc_server_span(request, context.invocation_metadata()):
                return self._model_infer(request, context)
        return self._model_infer(request, context)

    def _model_infer(self, request: Pb, context: grpc.ServicerContext) -> Pb:
        dataplane = self._dataplane
        if type(request) is codec.Undecodable:  # the loop's servicer answers it
            return self._on_loop("ModelInfer", request, context)
        if not dataplane.runs_blocking(request.model_name, request.model_version or None):
            wanted = dataplane.wants_headers(request.model_name, request.model_version or None)
            return self._on_loop("ModelInfer", request, context,
                                 context.invocation_metadata() if wanted else None)
        try:
            try:
                internal = codec.request_to_internal(request)
            except TurnoutError as err:
                dataplane.count_rejected(model=request.model_name,
                                         version=request.model_version or None,
                                         protocol=PROTOCOL, error=err)
                raise
            response = dataplane.infer_blocking(internal, protocol=PROTOCOL)
            return codec.response_from_internal(response, raw=bool(request.raw_input_contents))
        except TurnoutError as err:
            context.abort(grpc.StatusCode[err.grpc_code], str(err))
        except Exception:
            rid = current_request_id()
            log.exception("unexpected error in gRPC ModelInfer (request id %s)", rid)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error in ModelInfer "
                          f"(request id {rid}; the server log has the details)")
        raise AssertionError("context.abort returned")  # it always raises

    def _on_loop(self, name: str, request: Pb, context: grpc.ServicerContext,
                 metadata: Any = None) -> Pb:
        method = getattr(self._async, name)
        future = asyncio.run_coroutine_threadsafe(method(request, _LoopContext(metadata)),
                                                  self._loop)
        try:
            return future.result()
        except _Aborted as aborted:
            context.abort(aborted.code, aborted.details)
        raise AssertionError("context.abort returned")

    def handler(self, name: str) -> Callable[[Pb, grpc.ServicerContext], Pb]:
        if name == "ModelInfer":
            return self.ModelInfer
        return lambda request, context: self._on_loop(name, request, context)


def build_threaded_grpc_server(dataplane: DataPlane, settings: ServerSettings,
                               loop: asyncio.AbstractEventLoop, *,
                               credentials: grpc.ServerCredentials | None = None,
                               interceptors: Sequence[grpc.ServerInterceptor] = ()
                               ) -> tuple[grpc.Server, Callable[[bool], None]]:
    """A bound, not yet started, threaded gRPC server and its health switch (TLS with
    ``credentials``)."""
    limit = settings.max_payload_bytes
    server = grpc.server(
        ThreadPoolExecutor(settings.grpc_threads, thread_name_prefix="grpc"),
        interceptors=list(interceptors) or None,
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 1)])
    servicer = ThreadedServicer(dataplane, loop)
    handlers: dict[str, Any] = {
        name: grpc.unary_unary_rpc_method_handler(
            servicer.handler(name), request_deserializer=codec.lenient_parser(request_cls),
            response_serializer=response_cls.SerializeToString)
        for name, (request_cls, response_cls) in proto.METHODS.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(proto.SERVICE_NAME, handlers),))
    health_servicer = health.HealthServicer()
    for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (proto.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server,
        pool=reflection_pool())
    bind_port(server, bind_address(settings.host, settings.grpc_port), credentials)

    def set_serving(serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in HEALTH_SERVICES:
            health_servicer.set(service, status)

    return server, set_serving
