"""The REST hot path: raw ASGI for the inference routes, everything else falls through.

Starlette's router and middleware stack cost more than decoding and predicting a small
model, so ``POST /v2/models/{m}[/versions/{v}]/infer`` and ``POST /v1/models/{m}:predict``
are matched by splitting the path once and answered with two ``send`` calls. Other routes
(health, metadata, repository, metrics) go to the Starlette app, where clarity matters more.
The same endpoints are the model server's
:class:`~serving.transport.fastpath.InlineFastHandler`, which answers most inference requests
before uvicorn builds an ASGI cycle for them at all.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.protocol import codec_grpc, codec_v1, codec_v2
from serving.protocol.errors import TurnoutError
from serving.protocol.templates import TemplateCache
from serving.protocol.types import InferenceRequest, InferenceResponse
from serving.server.dataplane import DataPlane
from serving.server.rest.body import parse_header_length, read_body
from serving.transport import tracing
from serving.transport.fastpath import Headers, Reply
from serving.transport.logs import request_id_var

log = logging.getLogger("turnout.rest")

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
# A serialized ModelInferRequest as the body, answered with a serialized ModelInferResponse:
# how the router forwards gRPC clients' calls to Turnout model servers (docs/protocols.md).
PROTOBUF = codec_grpc.PROTOBUF_CONTENT_TYPE
PROTOBUF_PROTOCOL = "rest-proto"
_parse_infer_request = codec_grpc.infer_parser()
# Cheap unique ids for log lines when the client sends none: a per-process prefix (process
# id and random bits, so replicas whose processes share a pid differ too) + a counter. The
# prefix is made again in every forked child: `--workers N` forks after this module is
# imported, and workers must not repeat each other's ids (nor the parent's).
_ids = itertools.count(1)
_id_prefix = ""


def _new_id_prefix() -> None:
    global _ids, _id_prefix
    _ids = itertools.count(1)
    _id_prefix = f"{os.getpid():x}-{os.urandom(3).hex()}-"


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


_MAX_ROUTES = 256


def inference_headers(headers: list[tuple[bytes, bytes]]
                      ) -> tuple[bytes | None, bytes | None, bytes | None]:
    """Content-Length, Inference-Header-Content-Length and X-Request-Id (at most 128 bytes),
    from lower-cased raw headers."""
    length = header_length = request_id = None
    for name, value in headers:
        if name == b"content-length":
            length = value
        elif name == b"inference-header-content-length":
            header_length = value
        elif name == b"x-request-id":
            request_id = value[:128]
    return length, header_length, request_id


def new_request_id() -> str:
    """An id for log lines of a request whose client sent no X-Request-Id."""
    return _id_prefix + str(next(_ids))


def _protobuf_route(route: tuple[str, str, str | None] | None,
                    headers: list[tuple[bytes, bytes]]) -> tuple[str, str, str | None] | None:
    """``route``, marked as protobuf-over-HTTP when a V2 request says so in Content-Type."""
    if route is not None and route[0] == "rest":
        for name, value in headers:
            if name == b"content-type":
                if value == PROTOBUF:
                    return PROTOBUF_PROTOCOL, route[1], route[2]
                break
    return route


def route_of(path: str) -> tuple[str, str, str | None] | None:
    """(protocol, model, version) for an inference path, else None."""
    parts = path.split("/")
    n = len(parts)
    if n == 5 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "infer":
        return "rest", parts[3], None
    if n == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions" \
            and parts[6] == "infer":
        return "rest", parts[3], parts[5]
    if n == 4 and parts[1] == "v1" and parts[2] == "models" and parts[3].endswith(":predict"):
        return "rest-v1", parts[3][: -len(":predict")], None
    return None


class InferenceEndpoints:
    """ASGI app answering inference routes itself and passing the rest to ``fallback``."""

    def __init__(self, dataplane: DataPlane, fallback: ASGIApp, *, max_payload_bytes: int) -> None:
        self._dataplane = dataplane
        self._fallback = fallback
        self._limit = max_payload_bytes
        # read by the fast path for every request: a plain attribute
        self.max_payload_bytes = max_payload_bytes
        # Binary requests' JSON headers decoded before (serving/protocol/templates.py).
        self._templates = TemplateCache()
        # route_of's answer by path (client-chosen text: bounded, starts over when full)
        self._routes: dict[str, tuple[str, str, str | None] | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" \
            else None
        if route is None:
            await self._fallback(scope, receive, send)
            return
        route = _protobuf_route(route, scope["headers"])
        assert route is not None
        declared, header_length, request_id = inference_headers(scope["headers"])
        token = request_id_var.set(request_id.decode("latin-1") if request_id
                                   else new_request_id())
        try:
            if tracing.ON:
                with server_span(route, scope["headers"]):
                    status, body, headers = await self._answer(route, receive, declared,
                                                               header_length, scope["headers"])
                    _outcome(status)
            else:
                status, body, headers = await self._answer(route, receive, declared,
                                                           header_length, scope["headers"])
        finally:
            request_id_var.reset(token)
        if request_id is not None:
            headers.append((b"x-request-id", request_id))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, route: tuple[str, str, str | None], receive: Receive,
                      declared: bytes | None, header_length: bytes | None,
                      request_headers: list[tuple[bytes, bytes]]) -> Reply:
        try:
            # The model first: an unknown model is 404 whatever the body, as through the
            # router, which never reads bodies.
            self._check(route)
            body = await read_body(receive, declared=declared, limit=self._limit)
        except TurnoutError as err:
            self._count_rejected(route, err)
            return _failure(err, route)
        return await self._answer_body(route, body, header_length, request_headers)

    async def _answer_body(self, route: tuple[str, str, str | None], body: bytes,
                           header_length: bytes | None,
                           request_headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
        if tracing.ON:
            return await self._traced_body(route, body, header_length, request_headers)
        try:
            request, raw = self._request(route, body, header_length)
            request.headers = request_headers
            response = await self._dataplane.infer(request, protocol=route[0])
            return _encode(route[0], request, response, raw)
        except Exception as exc:
            return _failure(exc, route)

    async def _traced_body(self, route: tuple[str, str, str | None], body: bytes,
                           header_length: bytes | None,
                           request_headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
        """:meth:`_answer_body` with ``decode`` and ``encode`` spans (predict's are the data
        plane's)."""
        try:
            with tracing.span("decode"):
                request, raw = self._request(route, body, header_length)
                request.headers = request_headers
            response = await self._dataplane.infer(request, protocol=route[0])
            with tracing.span("encode"):
                return _encode(route[0], request, response, raw)
        except Exception as exc:
            return _failure(exc, route)

    def answer_blocking(self, route: tuple[str, str, str | None], body: bytes,
                        header_length: bytes | None) -> Reply:
        """:meth:`_answer_body` without awaiting anything: for inline, unbatched models,
        whose predict would run on the event loop anyway."""
        if tracing.ON:
            return self._traced_blocking(route, body, header_length)
        try:
            request, raw = self._request(route, body, header_length)
            response = self._dataplane.infer_blocking(request, protocol=route[0])
            return _encode(route[0], request, response, raw)
        except Exception as exc:
            return _failure(exc, route)

    def _traced_blocking(self, route: tuple[str, str, str | None], body: bytes,
                         header_length: bytes | None) -> Reply:
        """:meth:`answer_blocking` with ``decode`` and ``encode`` spans."""
        try:
            with tracing.span("decode"):
                request, raw = self._request(route, body, header_length)
            response = self._dataplane.infer_blocking(request, protocol=route[0])
            with tracing.span("encode"):
                return _encode(route[0], request, response, raw)
        except Exception as exc:
            return _failure(exc, route)

    # -- serving/rest/fastpath.py's InlineFastHandler: inference without an ASGI cycle -----
    def claim(self, path: str, headers: list[tuple[bytes, bytes]]
              ) -> tuple[tuple[str, str, str | None], bool] | None:
        routes = self._routes
        try:
            route = routes[path]
        except KeyError:
            if len(routes) >= _MAX_ROUTES:
                routes.clear()
            route = routes[path] = route_of(path)
        route = _protobuf_route(route, headers)
        if route is None:
            return None
        return route, self._dataplane.runs_blocking(route[1], route[2])

    def answer_now(self, route: tuple[str, str, str | None], body: bytes,
                   headers: list[tuple[bytes, bytes]]) -> Reply:
        _, header_length, request_id = inference_headers(headers)
        token = request_id_var.set(request_id.decode("latin-1") if request_id
                                   else new_request_id())
        try:
            if tracing.ON:
                with server_span(route, headers):
                    reply = self.answer_blocking(route, body, header_length)
                    _outcome(reply[0])
            else:
                reply = self.answer_blocking(route, body, header_length)
        finally:
            request_id_var.reset(token)
        if request_id is not None:
            reply[2].append((b"x-request-id", request_id))
        return reply

    async def answer(self, route: tuple[str, str, str | None], body: bytes,
                     headers: list[tuple[bytes, bytes]]) -> Reply:
        _, header_length, request_id = inference_headers(headers)
        # a task of its own: the context variable needs no reset
        request_id_var.set(request_id.decode("latin-1") if request_id else new_request_id())
        if tracing.ON:
            with server_span(route, headers):
                reply = await self._answer_body(route, body, header_length, headers)
                _outcome(reply[0])
        else:  # _answer_body written out: one coroutine fewer per request
            try:
                request, raw = self._request(route, body, header_length)
                request.headers = headers
                response = await self._dataplane.infer(request, protocol=route[0])
                reply = _encode(route[0], request, response, raw)
            except Exception as exc:
                reply = _failure(exc, route)
        if request_id is not None:
            reply[2].append((b"x-request-id", request_id))
        return reply

    def answer_soon(self, route: tuple[str, str, str | None], body: bytes, headers: Headers,
                    reply: Callable[[Reply | None], None]) -> Reply | asyncio.Future[Any]:
        """:meth:`answer` without a task of its own where the model is batched (the data
        plane's :meth:`~serving.server.dataplane.DataPlane.infer_soon`); otherwise
        :meth:`answer` runs in a task whose end calls ``reply``. A request refused before it
        waits is answered at once."""
        _, header_length, request_id = inference_headers(headers)
        token = request_id_var.set(request_id.decode("latin-1") if request_id
                                   else new_request_id())
        try:
            if tracing.ON:
                future: asyncio.Future[Any] = asyncio.ensure_future(
                    self.answer(route, body, headers))
                future.add_done_callback(functools.partial(_task_replied, route, reply))
                return future
            try:
                request, raw = self._request(route, body, header_length)
                request.headers = headers
                soon = self._dataplane.infer_soon(request, protocol=route[0], then=functools.partial(
                    _replied, route, request, raw, request_id, reply))
            except Exception as exc:
                return _with_id(_failure(exc, route), request_id)
            if soon is None:  # not batched (or unloaded meanwhile): the data plane's coroutine
                soon = asyncio.ensure_future(self._infer(route, request, raw, request_id))
                soon.add_done_callback(functools.partial(_task_replied, route, reply))
            return soon
        finally:
            request_id_var.reset(token)

    async def _infer(self, route: tuple[str, str, str | None], request: InferenceRequest,
                     raw: bool, request_id: bytes | None) -> Reply:
        try:
            response = await self._dataplane.infer(request, protocol=route[0])
            reply = _encode(route[0], request, response, raw)
        except Exception as exc:
            reply = _failure(exc, route)
        return _with_id(reply, request_id)

    def _check(self, route: tuple[str, str, str | None]) -> None:
        self._dataplane.check_model(route[1], route[2])

    def _request(self, route: tuple[str, str, str | None], body: bytes,
                 header_length: bytes | None) -> tuple[InferenceRequest, bool]:
        """The decoded request for a known model, and whether a protobuf request carried raw
        tensor contents (its answer must too); rejections are counted."""
        try:
            self._check(route)
        except TurnoutError as err:
            self._count_rejected(route, err)
            raise
        return self._decode(route, body, header_length)

    def _decode(self, route: tuple[str, str, str | None], body: bytes,
                header_length: bytes | None) -> tuple[InferenceRequest, bool]:
        protocol, model, version = route
        try:
            if protocol == "rest":
                return codec_v2.request_to_internal(
                    body, header_length=parse_header_length(header_length),
                    model_name=model, model_version=version, templates=self._templates), False
            if protocol == PROTOBUF_PROTOCOL:
                return _protobuf_request(body, model, version)
            return codec_v1.request_to_internal(body, model_name=model), False
        except TurnoutError as err:
            self._count_rejected(route, err)
            raise

    def _count_rejected(self, route: tuple[str, str, str | None], err: TurnoutError) -> None:
        protocol, model, version = route
        self._dataplane.count_rejected(model=model, version=version, protocol=protocol, error=err)


def _protobuf_request(body: bytes, model: str, version: str | None
                      ) -> tuple[InferenceRequest, bool]:
    """A serialized ModelInferRequest, decoded as the gRPC edge decodes it; the path names the
    model, as for every REST route."""
    message = _parse_infer_request(body)
    if type(message) is codec_grpc.Undecodable:
        raise message.error
    request, raw = codec_grpc.decoded_request(message)
    request.model_name, request.model_version = model, version
    return request, raw


def _replied(route: tuple[str, str, str | None], request: InferenceRequest, raw: bool,
             request_id: bytes | None, reply: Callable[[Reply | None], None],
             outcome: InferenceResponse | BaseException) -> None:
    """The data plane's answer to a request given to ``infer_soon``, as the client's reply."""
    if isinstance(outcome, asyncio.CancelledError):
        reply(None)
        return
    if isinstance(outcome, InferenceResponse):
        try:
            answer = _encode(route[0], request, outcome, raw)
        except Exception as exc:
            answer = _failure(exc, route)
    else:
        answer = _failure(outcome, route)  # type: ignore[arg-type]
    reply(_with_id(answer, request_id))


def _task_replied(route: tuple[str, str, str | None], reply: Callable[[Reply | None], None],
                  task: asyncio.Future[Reply]) -> None:
    if task.cancelled():
        reply(None)
        return
    try:
        answer = task.result()
    except Exception as exc:  # answer and _infer answer errors themselves: a bug
        answer = _failure(exc, route)
    reply(answer)


def _with_id(reply: Reply, request_id: bytes | None) -> Reply:
    if request_id is not None:
        reply[2].append((b"x-request-id", request_id))
    return reply


def _encode(protocol: str, request: InferenceRequest, response: InferenceResponse,
            raw: bool) -> Reply:
    if protocol == PROTOBUF_PROTOCOL:
        return 200, codec_grpc.encode_response(response, raw=raw), \
            [(b"content-type", PROTOBUF)]
    if protocol == "rest-v1":
        return 200, codec_v1.response_from_internal(response), [(b"content-type", _JSON)]
    payload, json_length = codec_v2.response_from_internal(response, request)
    if json_length is None:
        return 200, payload, [(b"content-type", _JSON)]
    return 200, payload, [(b"content-type", _BINARY),
                          (b"inference-header-content-length", str(json_length).encode())]


def _failure(exc: Exception, route: tuple[str, str, str | None]) -> Reply:
    """The answer for an exception: the error's own status, or a logged 500."""
    if isinstance(exc, TurnoutError):
        headers = [(b"content-type", _JSON)]
        if exc.retry_after is not None:
            headers.append((b"retry-after", str(exc.retry_after).encode()))
        return exc.http_status, orjson.dumps({"error": str(exc)}), headers
    log.error("unhandled error on inference for model %s", route[1],
              exc_info=(type(exc), exc, exc.__traceback__))
    return 500, b'{"error":"internal server error"}', [(b"content-type", _JSON)]


def server_span(route: tuple[str, str, str | None], headers: list[tuple[bytes, bytes]]
                ) -> Any:
    """The ``infer`` span of one REST inference, continuing the caller's ``traceparent``."""
    return tracing.span("infer", context=tracing.extract(headers), kind="server", attributes={
        "http.request.method": "POST", "turnout.protocol": route[0],
        "turnout.model.name": route[1], "turnout.model.version": route[2] or "",
        "turnout.request_id": request_id_var.get()})


def _outcome(status: int) -> None:
    tracing.annotate(status_code=status)
    if status >= 500:
        tracing.failed(status)
