"""gRPC server interceptors that authenticate every call (serving/transport/auth.py).

One for grpcio's threaded server, one for grpc.aio; both decide from the method name and the
invocation metadata alone, before the request message is read or decoded: a call without the
credential or scope its method needs is answered UNAUTHENTICATED or PERMISSION_DENIED by a
handler that never looks at the request. Open methods (health, reflection, ServerLive,
ServerReady) pass untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.protocol.errors import PermissionDenied, Unauthenticated
from serving.transport.auth import Authenticator, method_scope


def _decide(authenticator: Authenticator, details: grpc.HandlerCallDetails
            ) -> tuple[grpc.StatusCode, str] | None:
    scope = method_scope(details.method)  # type: ignore[attr-defined]
    if scope is None:
        return None
    try:
        principal = authenticator.from_metadata(
            details.invocation_metadata)  # type: ignore[attr-defined]
        principal.require(scope)
    except (Unauthenticated, PermissionDenied) as err:
        return grpc.StatusCode[err.grpc_code], str(err)
    return None


def _refusing(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str,
              *, aio: bool) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with ``code``; the
    request is taken as raw bytes and never parsed."""
    if aio:
        async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, details)

        async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, details)
            yield  # pragma: no cover  (makes it an async generator)

        unary: Callable[..., Any] = abort
        streaming: Callable[..., Any] = abort_stream
    else:
        def abort_sync(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(code, details)

        unary = streaming = abort_sync
    request_streaming = bool(handler is not None and handler.request_streaming)
    response_streaming = bool(handler is not None and handler.response_streaming)
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


class AuthInterceptor(grpc.ServerInterceptor):
    """For ``grpc.server(..., interceptors=[...])``."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                       grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails
                          ) -> grpc.RpcMethodHandler | None:
        refused = _decide(self.authenticator, handler_call_details)
        if refused is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED, as without authentication
        return _refusing(handler, *refused, aio=False)


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """For ``grpc.aio.server(interceptors=[...])``."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        refused = _decide(self.authenticator, handler_call_details)
        handler = await continuation(handler_call_details)
        if refused is None or handler is None:
            return handler
        return _refusing(handler, *refused, aio=True)
