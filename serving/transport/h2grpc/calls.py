"""One gRPC call on an HTTP/2 stream: the request message(s) in, the handler run, the answer
out, with grpc.aio's handler contract so the same servicers (and interceptors) serve on it.

A unary handler may answer synchronously: when it returns a message rather than a coroutine
the answer is written in the same event-loop step that read the request, with no task, future
or thread hand-off — the model server's ModelInfer does that for models that predict inline,
as its REST fast path does. It may also return a :class:`Later`, its promise to answer from a
callback: the answer is written as soon as it is given, with no task, coroutine or loop step in
between — the model server's ModelInfer for batched models, answered from the batch's
callback. Coroutines run as tasks; streaming handlers (async generators, or coroutines that
``await context.write``) too.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import types
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from serving.transport.h2grpc import frames as f

if TYPE_CHECKING:
    from serving.transport.h2grpc.connection import Connection, Stream
    from serving.transport.h2grpc.server import GrpcServer

log = logging.getLogger("turnout.grpc.h2")

_NOT_METADATA = frozenset({b"te", b"content-type", b"grpc-timeout", b"grpc-encoding",
                           b"grpc-accept-encoding", b"content-length"})
_END = object()
_COROUTINE = types.CoroutineType


class Later:
    """A unary handler's answer to come (see the module docstring): the handler returns it and
    calls :meth:`answer` or :meth:`fail` once; ``on_cancel`` runs if the call ends first (the
    client left, the deadline passed), when the answer is no longer wanted. Not awaitable: only
    this transport's calls take it, never an interceptor that wraps a handler."""

    __slots__ = ("_call", "_on_cancel", "_over")

    def __init__(self, on_cancel: Callable[[], object] | None = None) -> None:
        self._call: Call | None = None  # set by the call the handler returns it to
        self._on_cancel = on_cancel
        self._over = False

    def answer(self, response: Any) -> None:
        call = self._settle()
        if call is not None:
            call._respond(response)

    def fail(self, error: BaseException) -> None:
        """End the call as if the handler had raised ``error`` (an abort's status, else
        INTERNAL)."""
        call = self._settle()
        if call is not None:
            call._failed(error)

    def wanted(self) -> bool:
        return not self._over

    def cancel(self, msg: Any = None) -> None:
        """The call ended first (as ``Task.cancel`` for a handler's task)."""
        if not self._over:
            self._settle()
            if self._on_cancel is not None:
                self._on_cancel()

    def _settle(self) -> Call | None:
        if self._over:
            return None
        self._over = True
        call, self._call = self._call, None  # no cycle with the call once settled
        return call


class RequestStream:
    """A client-streaming call's messages, as the async iterator its handler takes (a class,
    not an async generator: mypyc compiles the one, not the other)."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        item = await self._call.read()
        if item is grpc.aio.EOF:
            raise StopAsyncIteration
        return item


class AbortError(Exception):
    """Raised by :meth:`CallContext.abort`: ends the call with ``code``."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing: tuple[tuple[str, Any], ...] = ()) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


class HandlerCallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


def _metadata(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[str, Any], ...]:
    out: list[tuple[str, Any]] = []
    for name, value in headers:
        if name[:1] == b":" or name in _NOT_METADATA:
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            try:
                out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            out.append((key, value.decode("latin-1")))
    return tuple(out)


# What calls read from their header lists, by list: the connection's HPACK decoder hands out
# the same list for a repeated header block (serving/transport/h2grpc/headers.py), so a client's
# steady calls read theirs once. Keyed by id() with the list itself in the entry, which keeps
# the id from being reused while the entry lives; bounded (full, it starts over).
_HEADS: dict[int, tuple[list[tuple[bytes, bytes]], tuple[str, bytes, bytes, float | None, bytes]]] = {}
_MAX_HEADS = 256


def _request_head(headers: list[tuple[bytes, bytes]]
                  ) -> tuple[str, bytes, bytes, float | None, bytes]:
    """(path, method, content-type, grpc-timeout in seconds, grpc-encoding) of a request."""
    entry = _HEADS.get(id(headers))
    if entry is not None and entry[0] is headers:
        return entry[1]
    method = path = content_type = b""
    encoding = b"identity"
    timeout = None
    for name, value in headers:
        if name == b":path":
            path = value
        elif name == b":method":
            method = value
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout = f.parse_timeout(value.decode("latin-1"))
        elif name == b"grpc-encoding":
            encoding = value
    head = (path.decode("latin-1"), method, content_type, timeout, encoding)
    if len(_HEADS) >= _MAX_HEADS:
        _HEADS.clear()
    _HEADS[id(headers)] = (headers, head)
    return head


class CallContext:
    """What a grpc.aio servicer may ask of its call (``grpc.aio.ServicerContext``'s methods
    that Turnout's, grpc_health's and grpc_reflection's servicers and interceptors use)."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._callbacks: list[Callable[[Any], None]] = []

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._call.metadata

    def peer(self) -> str:
        return self._call.conn.peer

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(deadline - self._call.conn.server.loop.time(), 0.0)

    def abort(self, code: grpc.StatusCode, details: str = "",
              trailing_metadata: tuple[tuple[str, Any], ...] = ()) -> Any:
        """Raises at once: ``await context.abort(...)`` and ``context.abort(...)`` both end
        the handler, as in grpc.aio and grpcio."""
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a code other than OK")
        raise AbortError(code, details, tuple(trailing_metadata))

    def abort_with_status(self, status: Any) -> Any:
        raise AbortError(status.code, status.details, tuple(status.trailing_metadata or ()))

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing

    async def send_initial_metadata(self, metadata: Any) -> None:
        self._call.send_head(tuple(metadata))

    async def write(self, message: Any) -> None:
        self._call.write(message)

    async def read(self) -> Any:
        return await self._call.read()

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished

    def is_active(self) -> bool:
        return not self._call.finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def set_compression(self, compression: Any) -> None:
        return None  # answers are never compressed

    def disable_next_message_compression(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None


class Call:
    __slots__ = ("server", "conn", "stream", "method", "headers", "_metadata", "handler",
                 "context", "body", "expected", "deadline", "timer", "task", "finished", "cancelled",
                 "head_sent", "encoding", "requests", "ended")

    def __init__(self, server: GrpcServer, conn: Connection, stream: Stream,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.server, self.conn, self.stream = server, conn, stream
        self.body = bytearray()
        self.expected = -1  # the length announced by the current message's prefix
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | Later | None = None
        self.finished = self.cancelled = self.head_sent = self.ended = False
        self.handler: grpc.RpcMethodHandler | None = None
        self.requests: asyncio.Queue[Any] | None = None
        self.context = CallContext(self)
        self.method, method, content_type, timeout, self.encoding = _request_head(headers)
        self.headers = headers
        self._metadata: tuple[tuple[str, Any], ...] | None = None
        if method != b"POST" or not content_type.startswith(b"application/grpc"):
            self.finished = True
            status = b"405" if method != b"POST" else b"415"
            conn.send_headers(stream, f.literal(b":status", status), end_stream=True)
            return
        if timeout is not None:
            loop = server.loop
            self.deadline = loop.time() + timeout
            self.timer = loop.call_at(self.deadline, self._expired)
        handler = server.cached_handler(self.method)
        if handler is not None:
            self._resolved(handler)
        elif server.has_interceptors or self.method not in server.unknown:
            self.task = server.loop.create_task(self._resolve())
        else:
            self._finish_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    @property
    def metadata(self) -> tuple[tuple[str, Any], ...]:
        """The request's metadata, decoded when first asked for: ModelInfer never asks unless
        its model reads headers or an interceptor runs."""
        metadata = self._metadata
        if metadata is None:
            metadata = self._metadata = _metadata(self.headers)
        return metadata

    # -- handler lookup ---------------------------------------------------------------------
    async def _resolve(self) -> None:
        try:
            handler = await self.server.lookup(HandlerCallDetails(self.method, self.metadata))
        except Exception:
            log.exception("gRPC handler lookup failed for %s", self.method)
            self._finish_status(grpc.StatusCode.INTERNAL, "handler lookup failed")
            return
        self.task = None
        if handler is None:
            self._finish_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        self._resolved(handler)

    def _resolved(self, handler: grpc.RpcMethodHandler) -> None:
        self.handler = handler
        if handler.request_streaming:
            self.requests = asyncio.Queue()
            self.task = self.server.loop.create_task(self._run_streaming())
            self.on_data(b"")  # what arrived while the handler was looked up
            if self.ended:
                self.on_end()
            return
        if self.ended and not self.finished and not handler.request_streaming:
            self._run_unary()

    # -- request side -----------------------------------------------------------------------
    def on_data(self, data: bytes) -> None:
        if self.finished:
            return
        body = self.body
        body += data
        while True:
            if self.expected < 0:
                if len(body) < 5:
                    return
                self.expected = f.u32(body, 1)
                if self.expected > self.server.max_receive:
                    self._finish_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        f"Received message larger than max ({self.expected} "
                                        f"vs. {self.server.max_receive})")
                    return
            if self.requests is None or len(body) < 5 + self.expected:
                return  # unary: the message is taken whole at the end of the request
            message = self._message(bytes(body[:5 + self.expected]))
            del body[:5 + self.expected]
            self.conn.release(5 + self.expected)
            self.expected = -1
            if message is None:
                return
            self.requests.put_nowait(message)

    def on_end(self) -> None:
        self.ended = True
        if self.finished:
            return
        if self.requests is not None:
            if self.body:
                self._finish_status(grpc.StatusCode.INTERNAL, "incomplete request message")
                return
            self.requests.put_nowait(_END)
        elif self.handler is not None:
            self._run_unary()

    def _message(self, framed: bytes) -> bytes | None:
        """The payload of one length-prefixed message, decompressed; None after answering
        with an error."""
        payload = framed[5:]
        if not framed[0]:
            return payload
        encoding = self.encoding
        if encoding in (b"gzip", b"deflate"):
            inflater = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
            try:
                out = inflater.decompress(payload, self.server.max_receive + 1)
            except zlib.error:
                self._finish_status(grpc.StatusCode.INTERNAL, "undecompressable message")
                return None
            if len(out) > self.server.max_receive:
                self._finish_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message "
                                    f"larger than max (over {self.server.max_receive})")
                return None
            return out
        if encoding == b"identity":
            self._finish_status(grpc.StatusCode.INTERNAL, "a compressed message without "
                                "grpc-encoding")
        else:
            self._finish_status(grpc.StatusCode.UNIMPLEMENTED, "Compression algorithm "
                                f"'{encoding.decode('latin-1')}' is not supported")
        return None

    async def read(self) -> Any:
        assert self.requests is not None and self.handler is not None
        item = await self.requests.get()
        if item is _END:
            self.requests.put_nowait(_END)
            return grpc.aio.EOF
        deserializer = self.handler.request_deserializer
        return deserializer(item) if deserializer else item

    def _request_iterator(self) -> RequestStream:
        return RequestStream(self)

    # -- running the handler ----------------------------------------------------------------
    def _run_unary(self) -> None:
        body, handler = self.body, self.handler
        assert handler is not None
        if self.expected < 0 or len(body) != 5 + self.expected:
            self._finish_status(grpc.StatusCode.INTERNAL, "a unary call needs exactly one "
                                "request message")
            return
        self.body = bytearray()
        self.conn.release(len(body))
        message = self._message(bytes(body))
        if message is None:
            return
        deserializer = handler.request_deserializer
        try:
            request = deserializer(message) if deserializer else message
            if handler.response_streaming:
                self.task = self.server.loop.create_task(
                    self._stream_out(handler.unary_stream(request, self.context)))
                return
            result = handler.unary_unary(request, self.context)
        except Exception as exc:
            self._failed(exc)
            return
        kind = type(result)
        if kind is Later:
            result._call = self
            self.task = result  # cancelled with the call, as a task would be
        elif kind is _COROUTINE or (kind is not bytes and asyncio.iscoroutine(result)):
            self.task = self.server.loop.create_task(self._await_unary(result))
        else:
            self._respond(result)

    async def _await_unary(self, coroutine: Any) -> None:
        try:
            response = await coroutine
        except BaseException as exc:
            self._failed(exc)
            return
        self._respond(response)

    async def _run_streaming(self) -> None:
        handler = self.handler
        assert handler is not None
        try:
            if handler.response_streaming:
                await self._stream_out(handler.stream_stream(self._request_iterator(),
                                                             self.context))
                return
            response = await handler.stream_unary(self._request_iterator(), self.context)
        except BaseException as exc:
            self._failed(exc)
            return
        self._respond(response)

    async def _stream_out(self, result: Any) -> None:
        try:
            if hasattr(result, "__aiter__"):
                async for message in result:
                    self.write(message)
            elif asyncio.iscoroutine(result):
                await result
            else:  # a synchronous generator
                for message in result:
                    self.write(message)
        except BaseException as exc:
            self._failed(exc)
            return
        if not self.finished:
            self._finish_trailers()

    # -- answering --------------------------------------------------------------------------
    def send_head(self, metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        if not self.head_sent and not self.finished:
            self.head_sent = True
            self.conn.send_headers(self.stream, f.RESPONSE_HEADERS + f.metadata_block(metadata))

    def write(self, message: Any) -> None:
        if self.finished:
            return
        payload = self._serialized(message)
        if payload is None:
            return
        self.send_head()
        self.conn.send_message(self.stream, payload)

    def _serialized(self, message: Any) -> bytes | None:
        handler = self.handler
        serializer = handler.response_serializer if handler is not None else None
        data = serializer(message) if serializer else message
        if len(data) > self.server.max_send:
            self._finish_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than "
                                f"max ({len(data)} vs. {self.server.max_send})")
            return None
        return b"\x00" + len(data).to_bytes(4, "big") + data

    def _respond(self, response: Any) -> None:
        if self.finished:
            return
        context = self.context
        if response is None or (context._code is not None and
                                context._code != grpc.StatusCode.OK):
            code = context._code or grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.OK:
                code = grpc.StatusCode.INTERNAL
            self._finish_status(code, context._details or ("" if code != grpc.StatusCode.INTERNAL
                                                           else "the handler gave no answer"),
                                context._trailing)
            return
        payload = self._serialized(response)
        if payload is None:
            return
        self._done()
        trailers = f.STATUS_OK
        if context._trailing:
            trailers += f.metadata_block(context._trailing)
        head = None
        if not self.head_sent:
            self.head_sent = True
            head = f.RESPONSE_HEADERS
        self.conn.send_response(self.stream, head, payload, trailers)

    def _finish_trailers(self) -> None:
        context = self.context
        code = context._code or grpc.StatusCode.OK
        self._done()
        block = f.status_block(code.value[0], context._details) + \
            f.metadata_block(context._trailing)
        if not self.head_sent:
            self.head_sent = True
            self.conn.send_headers(self.stream, f.RESPONSE_HEADERS + block, end_stream=True)
        else:
            self.conn.send_trailers(self.stream, block)

    def _finish_status(self, code: grpc.StatusCode, details: str,
                       trailing: tuple[tuple[str, Any], ...] = ()) -> None:
        if self.finished:
            return
        self.context._code, self.context._details = code, details
        self.context._trailing = tuple(trailing) or self.context._trailing
        self._finish_trailers()

    def _failed(self, exc: BaseException) -> None:
        """The handler raised: its abort's status, nothing when the call was cancelled (the
        client is gone or the deadline answered), INTERNAL (logged, never sent) otherwise."""
        if isinstance(exc, AbortError):
            self._finish_status(exc.code, exc.details, exc.trailing)
        elif isinstance(exc, asyncio.CancelledError):
            return
        elif isinstance(exc, Exception):
            log.error("unexpected error in gRPC %s", self.method, exc_info=exc)
            self._finish_status(grpc.StatusCode.INTERNAL, "internal server error (the server "
                                "log has the details)")
        else:
            raise exc

    def _expired(self) -> None:
        self.timer = None
        if not self.finished:
            self._finish_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            if self.task is not None:
                self.task.cancel()

    def _done(self) -> None:
        self.finished = True
        if self.body:  # never to be read: no longer held against the connection
            self.conn.release(len(self.body))
            self.body = bytearray()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        context = self.context
        for callback in context._callbacks:
            try:
                callback(context)
            except Exception:
                log.exception("gRPC done callback failed")
        # The handler may keep its context (which keeps this call); the call lets go of the
        # context, so no cycle is left for the collector: a finished call's objects go by
        # reference counting (a cycle per call made a young collection every few requests).
        self.context = None  # type: ignore[assignment]

    def cancel(self) -> None:
        """The client reset the stream or left: the answer is never sent."""
        if self.finished:
            return
        self.cancelled = True
        self._done()
        if self.task is not None:
            self.task.cancel()
        if self.requests is not None:
            self.requests.put_nowait(_END)
