"""Inference requests to inline models answered inside uvicorn's protocol callbacks.

Per request, uvicorn's httptools protocol builds an ASGI scope, a ``RequestResponseCycle``,
an ``asyncio.Event`` and a task, and passes four messages through ``receive`` and ``send``:
py-spy put that machinery above a third of the server's CPU for a small ONNX model, more than
decoding, predicting and encoding together. For a model whose predict runs on the event loop
anyway (inline, unbatched: ``DataPlane.runs_blocking``) none of it buys anything, so
:class:`InferenceHttpProtocol` parses such a request with the same httptools parser, answers
it synchronously in ``on_message_complete`` through :meth:`InferenceEndpoints.answer_blocking`
(the same decode, data plane and encode as the ASGI path) and writes the response in one go.

Everything else takes uvicorn's own path unchanged: other routes and methods, thread-pool and
batched models, bodies without a Content-Length or over the payload limit, ``Expect:
100-continue``, query strings and escaped paths, and any request that arrives while an earlier
one on the connection is still being answered (so pipelined responses keep their order) or
while the client is not reading its responses (so writes stay under flow control).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..logs import request_id_var
from .coalesce import CoalescingHttpToolsProtocol
from .infer import InferenceEndpoints, inference_headers, new_request_id, route_of

_STATUS_LINES: dict[int, bytes] = {}


def bind_protocol(endpoints: InferenceEndpoints) -> type[InferenceHttpProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for these endpoints."""
    return type("BoundInferenceHttpProtocol", (InferenceHttpProtocol,), {"endpoints": endpoints})


class InferenceHttpProtocol(CoalescingHttpToolsProtocol):
    endpoints: ClassVar[InferenceEndpoints]
    # (route, inference-header-content-length, x-request-id, keep-alive) of the request whose
    # body is being read on the fast path, else None; its body chunks.
    _fast: tuple[tuple[str, str, str | None], bytes | None, bytes | None, bool] | None = None
    _fast_body: list[bytes]

    def on_headers_complete(self) -> None:
        fast = self._fast_request()
        if fast is None:
            super().on_headers_complete()
            return
        self._fast = fast
        self._fast_body = []

    def on_body(self, body: bytes) -> None:
        if self._fast is None:
            super().on_body(body)
        else:
            self._fast_body.append(body)

    def on_message_complete(self) -> None:
        fast = self._fast
        if fast is None:
            super().on_message_complete()
            return
        self._fast = None
        chunks = self._fast_body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        route, header_length, request_id, keep_alive = fast
        token = request_id_var.set(request_id.decode("latin-1") if request_id
                                   else new_request_id())
        try:
            status, payload, headers = self.endpoints.answer_blocking(route, body, header_length)
        finally:
            request_id_var.reset(token)
        self._write_response(status, payload, headers, request_id, keep_alive)

    def _fast_request(self) -> Any:
        """The fast-path state for the request whose headers just arrived, or None."""
        parser = self.parser
        if parser.get_method() != b"POST" or self.expect_100_continue or self.pipeline \
                or (self.cycle is not None and not self.cycle.response_complete) \
                or self.flow.write_paused:
            return None
        url = self.url
        if b"?" in url or b"%" in url:
            return None
        try:
            route = route_of(url.decode("ascii"))
        except UnicodeDecodeError:
            return None
        if route is None:
            return None
        length, header_length, request_id, chunked = inference_headers(self.headers)
        try:
            if chunked or length is None or int(length) > self.endpoints.max_payload_bytes:
                return None  # uvicorn's path streams, counts and refuses with 413
        except ValueError:
            return None
        if not self.endpoints.runs_blocking(route):
            return None
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        return route, header_length, request_id, keep_alive

    def _write_response(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                        request_id: bytes | None, keep_alive: bool) -> None:
        line = _STATUS_LINES.get(status)
        if line is None:
            line = _STATUS_LINES[status] = _status_line(status)
        parts = [line]
        for name, value in self.server_state.default_headers:  # server, date: as uvicorn sends
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if request_id is not None:
            parts += (b"x-request-id: ", request_id, b"\r\n")
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        elif self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)


def _status_line(status: int) -> bytes:
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()
