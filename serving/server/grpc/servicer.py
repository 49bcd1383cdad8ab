"""The ``inference.GRPCInferenceService`` servicer: translate, call the data plane, translate.

Every RPC is wrapped by :func:`_rpc`, so a ``TurnoutError`` becomes its mapped status code
with its message and anything unexpected becomes INTERNAL with a clean message (the traceback
stays in the server log). A handler therefore never crashes the server or leaks internals.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import ServicerContext as Context

from serving.protocol import codec_grpc as codec
from serving.protocol import proto
from serving.protocol.codec_grpc import Pb
from serving.protocol.errors import ModelNotReady, TurnoutError
from serving.protocol.types import InferenceRequest
from serving.server.dataplane import DataPlane, current_request_id
from serving.transport import tracing

log = logging.getLogger("turnout.grpc")

PROTOCOL = "grpc"
# Turnout has no ensembles, so there are never dependents to unload along with a model.
UNLOAD_IGNORED = frozenset({"unload_dependents"})
Handler = Callable[["InferenceServicer", Pb, Context], Awaitable[Pb]]


def _rpc(method: Handler) -> Handler:
    """Map errors raised by one RPC to gRPC statuses (see the module docstring)."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: InferenceServicer, request: Pb, context: Context) -> Pb:
        try:
            if type(request) is codec.Undecodable:
                self.dataplane.count_rejected(model="", version=None, protocol=PROTOCOL,
                                              error=request.error)
                raise request.error
            return await method(self, request, context)
        except Exception as exc:
            await _abort(exc, context, name)
        raise AssertionError("context.abort returned")  # it always raises

    return handler


async def _abort(exc: Exception, context: Context, name: str) -> None:
    """End the call for ``exc``: a TurnoutError's mapped status and message, else INTERNAL
    with the request id (the traceback goes to the log only)."""
    if isinstance(exc, TurnoutError):
        await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))
    rid = current_request_id()
    log.error("unexpected error in gRPC %s (request id %s)", name, rid,
              exc_info=(type(exc), exc, exc.__traceback__))
    await context.abort(grpc.StatusCode.INTERNAL, f"internal server error in {name} "
                        f"(request id {rid}; the server log has the details)")


class InferenceServicer:
    """One async method per RPC of the service, named exactly as the RPC."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @_rpc
    async def ServerLive(self, request: Pb, context: Context) -> Pb:
        return proto.ServerLiveResponse(live=self.dataplane.live())

    @_rpc
    async def ServerReady(self, request: Pb, context: Context) -> Pb:
        return proto.ServerReadyResponse(ready=self.dataplane.ready())

    @_rpc
    async def ModelReady(self, request: Pb, context: Context) -> Pb:
        ready = self.dataplane.model_ready(request.name, request.version or None)
        return proto.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request: Pb, context: Context) -> Pb:
        return codec.server_metadata_to_proto(self.dataplane.server_metadata())

    @_rpc
    async def ModelMetadata(self, request: Pb, context: Context) -> Pb:
        meta = self.dataplane.model_metadata(request.name, request.version or None)
        if meta.state != "READY":  # a model that failed to load has no real metadata
            raise ModelNotReady(f"model '{meta.name}' is {meta.state}"
                                + (f": {meta.reason}" if meta.reason else ""))
        return codec.model_metadata_to_proto(meta)

    async def ModelInfer(self, request: Pb, context: Context) -> Pb:
        # _rpc's error mapping written out: the hot RPC runs as one coroutine, not three
        try:
            if tracing.ON:
                metadata = getattr(context, "invocation_metadata", None)
                if metadata is not None:  # (the threaded servicer's call: its span is current)
                    with grpc_server_span(request, metadata()):
                        return await self._infer(request, context)
                return await self._infer(request, context)
            internal, raw = self.decode(request, context)
            return codec.encode_response(
                await self.dataplane.infer(internal, protocol=PROTOCOL), raw=raw)
        except Exception as exc:
            await _abort(exc, context, "ModelInfer")
        raise AssertionError("context.abort returned")  # it always raises

    async def _infer(self, request: Pb, context: Context) -> Pb:
        internal, raw = self.decode(request, context)
        response = await self.dataplane.infer(internal, protocol=PROTOCOL)
        return codec.encode_response(response, raw=raw)

    async def infer_decoded(self, internal: InferenceRequest, raw: bool,
                            context: Context) -> Pb:
        """ModelInfer's second half, for an edge that decoded the request itself."""
        try:
            return codec.encode_response(
                await self.dataplane.infer(internal, protocol=PROTOCOL), raw=raw)
        except Exception as exc:
            await _abort(exc, context, "ModelInfer")
        raise AssertionError("context.abort returned")  # it always raises

    def decode(self, request: Pb, context: Context) -> tuple[InferenceRequest, bool]:
        """The internal request (its metadata attached where the model reads headers) and
        whether the answer carries raw contents; refusals are counted."""
        dataplane = self.dataplane
        if type(request) is codec.Undecodable:
            dataplane.count_rejected(model="", version=None, protocol=PROTOCOL,
                                     error=request.error)
            raise request.error
        try:
            internal, raw = codec.decoded_request(request)
        except TurnoutError as err:
            dataplane.count_rejected(model=request.model_name,
                                     version=request.model_version or None,
                                     protocol=PROTOCOL, error=err)
            raise
        if dataplane.wants_headers(internal.model_name, internal.model_version):
            internal.headers = call_metadata(context)
        return internal, raw

    @_rpc
    async def RepositoryIndex(self, request: Pb, context: Context) -> Pb:
        return codec.repository_index_to_proto(self.dataplane.repository_index(),
                                               ready_only=request.ready)

    @_rpc
    async def RepositoryModelLoad(self, request: Pb, context: Context) -> Pb:
        name = codec.repository_model_name(request)
        await self.dataplane.load_model(name)
        return proto.RepositoryModelLoadResponse(model_name=name, is_loaded=True)

    @_rpc
    async def RepositoryModelUnload(self, request: Pb, context: Context) -> Pb:
        name = codec.repository_model_name(request, ignored=UNLOAD_IGNORED)
        await self.dataplane.unload_model(name)
        return proto.RepositoryModelUnloadResponse(model_name=name, is_unloaded=True)


def infer_inline(dataplane: DataPlane, request: Pb, context: Any) -> Pb:
    """ModelInfer on the calling thread, for a model that predicts inline (the threaded
    engine's handler thread, the loop engine's loop step). ``context.abort`` must raise, as
    grpcio's and the loop engine's do."""
    try:
        try:
            internal, raw = codec.decoded_request(request)
        except TurnoutError as err:
            dataplane.count_rejected(model=request.model_name,
                                     version=request.model_version or None,
                                     protocol=PROTOCOL, error=err)
            raise
        if dataplane.wants_headers(internal.model_name, internal.model_version):
            internal.headers = context.invocation_metadata()
        response = dataplane.infer_blocking(internal, protocol=PROTOCOL)
        return codec.encode_response(response, raw=raw)
    except TurnoutError as err:
        context.abort(grpc.StatusCode[err.grpc_code], str(err))
    except Exception:
        rid = current_request_id()
        log.exception("unexpected error in gRPC ModelInfer (request id %s)", rid)
        context.abort(grpc.StatusCode.INTERNAL, "internal server error in ModelInfer "
                      f"(request id {rid}; the server log has the details)")
    raise AssertionError("context.abort returned")  # it always raises


def grpc_server_span(request: Pb, metadata: Any) -> Any:
    """The ``infer`` span of one gRPC ModelInfer, continuing the ``traceparent`` metadata."""
    return tracing.span("infer", context=tracing.extract(metadata or ()), kind="server",
                        attributes={"rpc.system": "grpc", "rpc.method": "ModelInfer",
                                    "rpc.service": "inference.GRPCInferenceService",
                                    "turnout.model.name": request.model_name,
                                    "turnout.model.version": request.model_version})


def call_metadata(context: Context) -> Any:
    """The call's metadata: the threaded engine's stand-in context carries it, an aio context
    is asked."""
    held = getattr(context, "turnout_metadata", None)
    if held is not None:
        return held
    metadata = getattr(context, "invocation_metadata", None)
    return (metadata() or ()) if metadata is not None else ()


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Unary handlers for every RPC in the service descriptor, with the private-pool codecs."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, (request_cls, response_cls) in proto.METHODS.items():
        behaviour: Any = getattr(servicer, name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=codec.request_parser(name, request_cls),
            response_serializer=codec.response_serializer(name, response_cls),
        )
    return handlers
