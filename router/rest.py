"""The router's REST edge: raw ASGI that proxies OIP V2 (JSON and binary) and V1 bodies as bytes.

Bodies are never decoded on the primary path: the router reads the model name from the URL,
picks a variant, rewrites the URL to the variant's model and version, and forwards the bytes.
Only when a variant serves the model under another name is the response's JSON header
re-encoded to carry the service name, so clients get the answer a direct call would give.
Upstream answers (4xx included) pass through unchanged; errors the router makes itself use
``{"error": msg}`` with the status from ``serving.protocol.errors``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from router.balance import Pool
from router.client import UpstreamResponse
from router.compare import Comparison, compare_outputs, v1_outputs, v2_outputs
from router.core import Router
from router.disagreements import MirrorOrigin
from router.hold import Waiter
from router.http_util import (
    RESPONSE_DROP,
    VARIANT_HEADER,
    forward_headers,
    read_body,
    send_error,
    send_json,
    send_response,
    with_retry_after,
)
from router.rewrite import rename_v2_json
from router.shadow import PrimaryAnswer
from router.table import ServiceRoute, VariantRoute
from serving.protocol.errors import Overloaded, TurnoutError, bounded_message
from serving.transport import tracing
from serving.transport.fastpath import Headers, Reply

log = logging.getLogger("turnout.router.rest")

_V2 = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")
_V1 = re.compile(r"^/v1/models/([^/:]+)(:predict)?$")
_HEADER_LENGTH = "inference-header-content-length"
# Request ids the router mints: a random per-process prefix and a counter — unique like a
# uuid4, without its cost on every request.
_ID_PREFIX = uuid.uuid4().hex[:16].encode()
_ID_COUNTER = itertools.count(1)


class RestEdge:
    """ASGI app for the router's public REST port."""

    def __init__(self, router: Router, *, max_payload_bytes: int, graphs: Any = None,
                 connection: ClientConnection | None = None) -> None:
        self.router = router
        self.max_payload_bytes = max_payload_bytes
        self.graphs = graphs  # GraphRunner, when graphs are enabled
        # The fast-path connection this edge serves (:meth:`for_connection`), so a held request
        # learns when its client goes away; None for the shared edge.
        self.connection = connection

    def for_connection(self, connection: ClientConnection) -> RestEdge:
        """This edge for the requests of one fast-path connection: the same state, plus the
        connection. Made once per connection, so requests pay nothing for it (built by the
        constructor, so its attributes keep the layout CPython reads fastest)."""
        return RestEdge(self.router, max_payload_bytes=self.max_payload_bytes,
                        graphs=self.graphs, connection=connection)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        path: str = scope["path"]
        rid = _request_id(scope)
        extra = [(b"x-request-id", rid)]
        try:
            if path == "/v2/health/live":
                return await send_json(send, 200, {"live": True}, extra)
            if path == "/v2/health/ready":
                ok = self.router.ready
                return await send_json(send, 200 if ok else 503, {"ready": ok}, extra)
            if path == "/v2" and scope["method"] == "GET":
                return await send_json(send, 200, {"name": "turnout-router", "version": "0.1.0",
                                                   "extensions": []}, extra)
            if path == "/v1/models" and scope["method"] == "GET":  # KServe V1's list
                table = self.router.table
                names = sorted({*table.services, *table.graphs})
                return await send_json(send, 200, {"models": names}, extra)
            if path == "/" and scope["method"] == "GET":  # KServe V1's liveness
                return await send_json(send, 200, {"status": "alive"}, extra)
            if path == "/metrics":
                return await send_response(send, 200, generate_latest(self.router.metrics.registry),
                                           [(b"content-type", CONTENT_TYPE_LATEST.encode())])
            match = _V2.match(path)
            if match:
                model, version, suffix = match.group(1), match.group(2), match.group(3) or ""
                kind = "infer" if suffix == "/infer" else "other"
                return await self._proxy(scope, receive, send, rid, model=model, version=version,
                                         suffix=suffix, kind=kind, protocol="rest")
            match = _V1.match(path)
            if match:
                model, suffix = match.group(1), match.group(2) or ""
                kind = "predict" if suffix else "other"
                return await self._proxy(scope, receive, send, rid, model=model, version=None,
                                         suffix=suffix, kind=kind, protocol="rest-v1")
            await send_json(send, 404, {"error": bounded_message(
                f"Not Found: {scope['method']} {path}")}, extra)
        except TurnoutError as err:
            await send_error(send, err, with_retry_after(err, extra))
        except Exception:
            log.exception("unhandled error on %s %s (request id %s)", scope["method"], path,
                          rid.decode("latin-1"))
            await send_json(send, 500, {"error": f"internal server error (request id "
                                        f"{rid.decode('latin-1')}; the router log has the "
                                        "details)"}, extra)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, rid: bytes, *, model: str,
                     version: str | None, suffix: str, kind: str, protocol: str) -> None:
        table = self.router.table  # one snapshot for the whole request
        headers = _decoded(scope["headers"])
        body = await read_body(receive, headers.get("content-length"), self.max_payload_bytes)
        if model in table.graphs and kind != "other" and self.graphs is not None:
            return await self.graphs.serve(send, rid, graph=table.graphs[model], body=body,
                                           headers=headers, protocol=protocol)
        call = _Call(scope["method"], scope["headers"], scope.get("query_string", b""), rid,
                     model, version, suffix, kind, protocol, table)
        status, payload, out_headers = await (
            self._traced(call, headers, body, receive) if tracing.ON
            else self._proxy_body(call, headers, body, receive))
        await send_response(send, status, payload, out_headers)

    async def _proxy_body(self, call: _Call, headers: dict[str, str] | None, body: bytes,
                          client: ClientConnection | Receive | None = None) -> Reply:
        """Route one request to a variant and return its answer, as the client will get it.

        ``headers`` (lower-case names, decoded) may be None: they are decoded from the call's
        raw headers only if the service has rules or sticky sessions to read them with.
        ``client`` tells a held request (router/hold.py) when its client goes away: ASGI's
        ``receive``; on the fast path, the connection this edge was copied for.
        """
        started = time.perf_counter()
        table = call.table
        service_label = variant_label = ""
        try:
            service = table.service(call.model)
            service_label = service.name
            if headers is None:
                headers = _decoded(call.headers) if service.spec.rules or service.spec.sticky \
                    else {}
            variant, rule = table.pick(service, headers)
            variant_label = variant.name
            if tracing.ON:
                tracing.annotate(service=service.name, variant=variant.name,
                                 revision=variant.spec.revision, rule=rule)
            if not variant.http.ready:  # no endpoint to serve now: maybe wait for one
                service, variant = await self.router.holds.hold(
                    service, variant, pool_of=_http_pool, headers=functools.partial(_decoded, call.headers),
                    watch=_watcher(client or self.connection))
                service_label, variant_label = service.name, variant.name
            logged = None if service.spec.logger is None or call.kind == "other" else \
                self.router.payloads.rest(service.spec.logger, service=service.name,
                                          variant=variant.name, revision=variant.spec.revision,
                                          protocol=call.protocol, headers=call.headers,
                                          rid=call.rid, body=body)
            response = await self._forward(call, service, variant, body)
        except TurnoutError as err:
            if isinstance(err, Overloaded):
                self.router.metrics.rejected.labels(service_label, variant_label).inc()
            self._count(service_label, variant_label, call.protocol, err.http_status, started)
            raise
        self._count(service_label, variant_label, call.protocol, response.status, started)
        if logged is not None and response.status == 200:  # KServe logs 200s only
            self.router.payloads.rest_response(logged, response.body, response.headers)
        out_headers = [(b"x-request-id", call.rid), (VARIANT_HEADER.encode(), variant.name.encode())]
        for key, value in response.headers:
            if key.lower() not in RESPONSE_DROP:
                out_headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
        return response.status, response.body, out_headers

    async def _traced(self, call: _Call, headers: dict[str, str] | None, body: bytes,
                      client: ClientConnection | Receive | None = None) -> Reply:
        """:meth:`_proxy_body` in a ``route`` span continuing the client's ``traceparent``."""
        with tracing.span("route", context=tracing.extract(call.headers), kind="server",
                          attributes={"http.request.method": call.method,
                                      "turnout.model.name": call.model,
                                      "turnout.protocol": call.protocol,
                                      "turnout.request_id": call.rid.decode("latin-1")}):
            try:
                reply = await self._proxy_body(call, headers, body, client)
            except TurnoutError as err:
                tracing.annotate(status_code=err.http_status, outcome=err.kind.value)
                tracing.failed(err.http_status)
                raise
            tracing.annotate(status_code=reply[0])
            if reply[0] >= 500:
                tracing.failed(reply[0])
            return reply

    # -- serving/rest/fastpath.py's FastHandler: proxied inference without an ASGI cycle -----
    def claim(self, path: str, headers: Headers) -> tuple[_Call, bool] | None:
        """Inference calls to services (graphs keep the ASGI path) are answered from the
        HTTP protocol's callbacks, in one task per request: each awaits its upstream, so none
        is claimed as answerable without awaiting."""
        match = _V2.match(path)
        if match is not None:
            model, version, suffix = match.group(1), match.group(2), match.group(3)
            if suffix != "/infer":
                return None
            protocol, kind = "rest", "infer"
        else:
            match = _V1.match(path)
            if match is None or not match.group(2):
                return None
            model, version, suffix, protocol, kind = match.group(1), None, ":predict", \
                "rest-v1", "predict"
        table = self.router.table  # the snapshot the call will be routed by
        if model in table.graphs:
            return None
        return _Call("POST", headers, b"", _request_id_of(headers), model, version, suffix,
                     kind, protocol, table), False

    async def answer(self, route: _Call, body: bytes, headers: Headers) -> Reply:
        try:
            if tracing.ON:
                return await self._traced(route, None, body)
            return await self._proxy_body(route, None, body)
        except TurnoutError as err:
            return err.http_status, orjson.dumps({"error": str(err)}), with_retry_after(err, [
                (b"content-type", b"application/json"), (b"x-request-id", route.rid)])
        except Exception:
            log.exception("unhandled error on POST for model %s", route.model)
            return 500, b'{"error":"internal server error"}', [
                (b"content-type", b"application/json"), (b"x-request-id", route.rid)]

    async def _forward(self, call: _Call, service: ServiceRoute, variant: VariantRoute,
                       body: bytes) -> UpstreamResponse:
        fwd = forward_headers(call.headers)
        if not any(k == "x-request-id" for k, _ in fwd):
            fwd.append(("x-request-id", call.rid.decode("latin-1")))
        query, version, suffix, protocol, kind = call.query, call.version, call.suffix, \
            call.protocol, call.kind
        deadline = time.monotonic() + service.upstream.timeout_seconds

        def target(v: VariantRoute) -> str:
            pinned = v.spec.version or version
            if protocol == "rest":
                url = f"/v2/models/{v.model}" + (f"/versions/{pinned}" if pinned else "") + suffix
            else:
                url = f"/v1/models/{v.model}{suffix}"
            return url + ("?" + query.decode("latin-1") if query else "")

        variant.gate.enter(f"variant {variant.name} of {service.name}")
        primary: PrimaryAnswer[UpstreamResponse] | None = None
        try:
            if kind != "other" and service.mirrors:
                primary = PrimaryAnswer()
                self._mirror(service, variant, primary, target, call.method, fwd, body, kind,
                             MirrorOrigin(variant.name, variant.spec.revision,
                                          call.rid.decode("latin-1"), protocol, body))
            response = await self.router.http_call(variant, method=call.method,
                                                   path=target(variant), headers=fwd,
                                                   body=body, deadline=deadline)
        except BaseException:
            if primary is not None:
                primary.set(None)
            raise
        finally:
            variant.gate.leave()
        if primary is not None:
            primary.set(response)
        if variant.renamed and response.status == 200 and protocol == "rest":
            response = _renamed(response, service.name)
        return response

    def _mirror(self, service: ServiceRoute, serving: VariantRoute,
                primary: PrimaryAnswer[UpstreamResponse], target: Any, method: str,
                headers: list[tuple[str, str]], body: bytes, kind: str,
                origin: MirrorOrigin) -> None:
        shadower = self.router.shadower
        for mirror, shadow in service.mirrors:
            # A copy to the variant that answers anyway would only agree with itself.
            if shadow.name == serving.name or not shadower.wanted(mirror):
                continue
            if not shadow.http.endpoints:  # scaled to zero: a copy is never held
                shadower.drop(shadow)
                continue
            deadline = time.monotonic() + mirror.timeout_seconds

            async def send(shadow: VariantRoute = shadow, deadline: float = deadline
                           ) -> UpstreamResponse:
                return await self.router.http_call(shadow, method=method, path=target(shadow),
                                                   headers=headers, body=body, deadline=deadline,
                                                   max_attempts=1)

            shadower.start(mirror=mirror, variant=shadow, send=send, primary=primary,
                           compare=_compare_v2 if kind == "infer" else _compare_v1,
                           origin=origin)

    def _count(self, service: str, variant: str, protocol: str, status: int, started: float) -> None:
        m = self.router.metrics
        m.requests.labels(service, variant, protocol, str(status)).inc()
        if service:
            m.duration.labels(service, variant, protocol).observe(time.perf_counter() - started)


class ClientConnection:
    """One fast-path client connection, as the requests it holds see it: whether it is gone,
    and the waiters to cancel when it goes.

    The edge keeps this instead of the protocol: a strong reference to the protocol would be a
    cycle (protocol, handler, edge), and a weak one is unsafe — the protocol's class is compiled
    by mypyc (serving/native.py), whose deallocator releases an instance's weak-reference list
    as if it owned it (mypyc/mypyc#1102), so a weak reference that outlives its connection (a
    shadow task's, say) is freed twice and corrupts memory."""

    __slots__ = ("transport", "closed", "held")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.closed = False
        self.held: set[Waiter] = set()

    def gone(self) -> bool:
        return self.closed or self.transport.is_closing()

    def close(self) -> None:
        """The connection is lost: cancel what its requests still wait for."""
        self.closed = True
        held, self.held = self.held, set()
        for waiter in held:
            waiter.cancel()


def _watcher(client: ClientConnection | Receive | None
             ) -> Callable[[Waiter], Callable[[], object] | None] | None:
    if client is None:
        return None
    if isinstance(client, ClientConnection):
        return functools.partial(_watch_connection, client)
    return functools.partial(_watch_receive, client)


def _watch_connection(connection: ClientConnection, waiter: Waiter
                      ) -> Callable[[], object] | None:
    """Cancel ``waiter`` when the fast-path connection closes (HoldAwareProtocol)."""
    if connection.gone():
        waiter.cancel()
        return None
    held = connection.held
    held.add(waiter)
    return lambda: held.discard(waiter)


def _watch_receive(receive: Receive, waiter: Waiter) -> Callable[[], object]:
    """Cancel ``waiter`` when ASGI's ``receive`` says the client disconnected (the body has
    been read, so the next message is the disconnect)."""
    async def watch() -> None:
        if (await receive()).get("type") == "http.disconnect":
            waiter.cancel()

    task = asyncio.ensure_future(watch())
    return task.cancel


def _http_pool(service: ServiceRoute, variant: VariantRoute) -> Pool:
    return variant.http


def _decoded(headers: Headers) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}


def _request_id(scope: Scope) -> bytes:
    return _request_id_of(scope["headers"])


def _request_id_of(headers: Headers) -> bytes:
    for key, value in headers:
        if key == b"x-request-id":
            return bytes(value[:128])
    return b"%s%x" % (_ID_PREFIX, next(_ID_COUNTER))


@dataclass(slots=True, frozen=True)
class _Call:
    """What the edge knows about one proxied call before picking a variant."""

    method: str
    headers: Headers
    query: bytes
    rid: bytes
    model: str
    version: str | None
    suffix: str
    kind: str
    protocol: str
    table: Any  # the routing table snapshot taken when the call arrived


def _header_length(response: UpstreamResponse) -> int | None:
    for key, value in response.headers:
        if key.lower() == _HEADER_LENGTH:
            return int(value)
    return None


def _renamed(response: UpstreamResponse, name: str) -> UpstreamResponse:
    length = _header_length(response)
    body, new_length = rename_v2_json(response.body, length, name)
    headers = [(k, str(new_length) if k.lower() == _HEADER_LENGTH else v)
               for k, v in response.headers]
    return UpstreamResponse(response.status, headers, body)


def _compare_v2(primary: UpstreamResponse, shadow: UpstreamResponse) -> Comparison | None:
    if primary.status != 200 or shadow.status != 200:
        return None
    return compare_outputs(v2_outputs(primary.body, _header_length(primary)),
                           v2_outputs(shadow.body, _header_length(shadow)))


def _compare_v1(primary: UpstreamResponse, shadow: UpstreamResponse) -> Comparison | None:
    if primary.status != 200 or shadow.status != 200:
        return None
    return compare_outputs(v1_outputs(primary.body), v1_outputs(shadow.body))
