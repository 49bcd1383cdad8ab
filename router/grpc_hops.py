"""How one gRPC call reaches one endpoint of a variant: the hops, and what their answers mean.

Two hops (docs/router.md): a gRPC call with the message bytes (fields 1/2 rewritten where the
variant needs it), or — to Turnout model servers, which list ``turnout_protobuf_infer`` in
their metadata — the same bytes as the body of the V2 infer route with ``content-type:
application/x-protobuf``, which costs both sides far less. Each hop comes as an ``attempt`` for
the retry loop (``router/forward.py``): on the event loop (graph steps, shadow copies) or in a
gRPC edge thread. Whatever the hop, the answer is a :class:`GrpcAnswer`: the response bytes,
or the status code and message the model server's gRPC edge would have sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson

from router.balance import Endpoint
from router.client import UpstreamError
from router.core import Router, classify_status
from router.forward import Verdict
from router.http_util import HOP_BY_HOP
from router.rewrite import with_name_version
from router.table import ServiceRoute, VariantRoute
from serving.protocol.codec_grpc import PROTOBUF_CONTENT_TYPE
from serving.protocol.errors import STATUS

# gRPC clients (h2load, some proxies) send these as metadata; over HTTP/1.1 they would
# describe the wrong message or connection.
_NOT_HTTP_HEADERS = HOP_BY_HOP | {"content-type", "content-length"}


@dataclass(frozen=True, slots=True)
class GrpcAnswer:
    code: grpc.StatusCode
    details: str
    body: bytes
    http_status: int = 0  # set when the answer came as protobuf over HTTP


_SERVER_ERRORS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.DATA_LOSS})


def classify_grpc(answer: GrpcAnswer) -> tuple[Verdict, str]:
    if answer.code == grpc.StatusCode.UNAVAILABLE:
        return "retry", answer.code.name
    if answer.code in _SERVER_ERRORS:
        return "error", answer.code.name
    return "ok", answer.code.name


def classify_protobuf_http(answer: GrpcAnswer) -> tuple[Verdict, str]:
    """As REST answers from the same endpoints are classified (retry 503, strike 502/504)."""
    return classify_status(answer.http_status)


# The model server's HTTP status for each error kind, back to its gRPC code (one code each).
_CODE_OF_STATUS = {status: grpc.StatusCode[code] for status, code in STATUS.values()}


Attempt = Callable[[Endpoint, float], Awaitable[GrpcAnswer]]


def grpc_attempt(router: Router, method: str, message: bytes,
                 metadata: Sequence[tuple[str, Any]]) -> Attempt:
    """One call of ``method`` with ``message`` on one endpoint, for :func:`call_variant`
    on the event loop (graph steps, shadow copies).

    A status other than OK is an answer (classified by :func:`classify_grpc`); the upstream's
    DEADLINE_EXCEEDED is a timeout, never retried.
    """
    async def attempt(endpoint: Endpoint, remaining: float) -> GrpcAnswer:
        call = router.channel(endpoint.address).unary_unary(method)
        try:
            body = await call(message, timeout=remaining, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            return _failed_call(endpoint, remaining, err)
        return GrpcAnswer(grpc.StatusCode.OK, "", body)
    return attempt


def blocking_attempt(router: Router, method: str, message: bytes,
                     metadata: Sequence[tuple[str, Any]]) -> Callable[[Endpoint, float], GrpcAnswer]:
    """:func:`grpc_attempt` for the edge's threads, on the router's threaded-client channels."""
    def attempt(endpoint: Endpoint, remaining: float) -> GrpcAnswer:
        call = router.blocking_call(endpoint.address, method)
        try:
            body = call(message, timeout=remaining, metadata=metadata)
        except grpc.RpcError as err:
            return _failed_call(endpoint, remaining, err)  # type: ignore[arg-type]
        return GrpcAnswer(grpc.StatusCode.OK, "", body)
    return attempt


def protobuf_http_attempt(router: Router, path: str, message: bytes,
                          headers: list[tuple[str, str]]
                          ) -> Callable[[Endpoint, float], GrpcAnswer]:
    """One ModelInfer as protobuf over HTTP/1.1 on one REST endpoint of a Turnout model server,
    from an edge thread (router/h1blocking.py)."""
    def attempt(endpoint: Endpoint, remaining: float) -> GrpcAnswer:
        response = router.blocking_http.request(endpoint.address, path, headers=headers,
                                                content_type=PROTOBUF_CONTENT_TYPE, body=message,
                                                timeout=remaining)
        return _protobuf_answer(response.status, response.body)
    return attempt


def protobuf_http_attempt_async(router: Router, path: str, message: bytes,
                                headers: list[tuple[str, str]]) -> Attempt:
    """:func:`protobuf_http_attempt` on the event loop (graph steps), with the REST pool's
    client."""
    fields = [("content-type", PROTOBUF_CONTENT_TYPE.decode()), *headers]

    async def attempt(endpoint: Endpoint, remaining: float) -> GrpcAnswer:
        response = await router.client.request("POST", endpoint.address + path, headers=fields,
                                               body=message, timeout=remaining)
        return _protobuf_answer(response.status, response.body)
    return attempt


def protobuf_http_headers(metadata: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    """The call's metadata that may travel as HTTP/1.1 headers."""
    return [(k, v) for k, v in metadata if isinstance(v, str) and k not in _NOT_HTTP_HEADERS]


def _protobuf_answer(status: int, body: bytes) -> GrpcAnswer:
    """An answer of the protobuf-over-HTTP route as the model server's gRPC edge would give it:
    the same bytes, or its error's one gRPC code and message."""
    if status == 200:
        return GrpcAnswer(grpc.StatusCode.OK, "", body, status)
    try:
        details = str(orjson.loads(body)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        details = body.decode("utf-8", "replace")
    return GrpcAnswer(_CODE_OF_STATUS.get(status, grpc.StatusCode.UNKNOWN), details, b"", status)


def _failed_call(endpoint: Endpoint, remaining: float, err: grpc.Call) -> GrpcAnswer:
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise UpstreamError("timeout", f"{endpoint.address} did not answer within "
                                       f"{remaining:.3g}s ({err.details()})") from None
    return GrpcAnswer(err.code(), err.details() or "", b"")


def via_http(service: ServiceRoute, variant: VariantRoute) -> bool:
    """Whether ModelInfer to ``variant`` takes the protobuf-over-HTTP hop (docs/router.md)."""
    mode, endpoints = service.upstream.grpc_via_http, variant.http.endpoints
    if mode == "auto":
        return bool(endpoints) and all(e.speaks_protobuf for e in endpoints)
    return mode and bool(endpoints)


def infer_path(variant: VariantRoute, version: str) -> str:
    """The REST path a ModelInfer for ``version`` takes at ``variant``'s endpoints;
    the model server takes the name and version from the path, so the message is not edited."""
    pinned = variant.spec.version or version
    return f"/v2/models/{variant.model}/versions/{pinned}/infer" if pinned \
        else f"/v2/models/{variant.model}/infer"


def message_for(variant: VariantRoute, request: bytes, version: str) -> bytes:
    """The request as ``variant``'s endpoints must see it: their model name, its pinned version."""
    pinned = variant.spec.version if variant.spec.version and variant.spec.version != version \
        else None
    return with_name_version(request, variant.model if variant.renamed else None, pinned)
