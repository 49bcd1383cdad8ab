"""The activator: where a scaled-to-zero revision's traffic goes while a replica starts.

Knative's idea, locally: the routes point a revision at zero replicas to this loopback server,
REST and gRPC alike, under the revision's name as the model name. A request here counts as
demand (the autoscaler asks for a replica at once), waits until a replica is ready, and is then
forwarded to it with the model name set back to the service's. The wait is bounded in time
(``hold_seconds``) and in size (``max_waiting``, REST and gRPC together); beyond either the
answer is one clients retry: 503 with ``Retry-After`` on REST, UNAVAILABLE on gRPC — never a
"not ready" or "not found", which clients would not retry.

The gRPC side is a generic handler for ``inference.GRPCInferenceService`` that forwards raw
message bytes, reading and rewriting only fields 1/2 (model name, version) the way the router
does (:mod:`router.rewrite`); tensors are never decoded. Server-level ``ServerLive`` and
``ServerReady`` are answered here, so the router's gRPC health check keeps the activator in.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import grpc
import orjson
import uvicorn
from starlette.types import Receive, Scope, Send

from router.rewrite import read_name_version, with_name_version
from serving.control.local.supervisor import Replica, free_port

if TYPE_CHECKING:
    from serving.control.local.plane import Plane

_MODEL = re.compile(r"^/(v1|v2)/models/([^/:]+)")
_HOP = {"content-length", "transfer-encoding", "connection", "host", "keep-alive"}
GRPC_SERVICE = "inference.GRPCInferenceService"
_GRPC_FORWARDED = frozenset({"ModelInfer", "ModelReady", "ModelMetadata"})
_GRPC_DROP_METADATA = frozenset({"user-agent", "content-type", "te", "grpc-timeout",
                                 "grpc-encoding", "grpc-accept-encoding"})
_SERVER_READY = b"\x08\x01"  # ServerLiveResponse / ServerReadyResponse {live|ready: true}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as the router's default max payload


class NoReplica(Exception):
    """A bound was exceeded; the message tells the client why and that a retry may work."""


class Activator:
    def __init__(self, plane: Plane, *, hold_seconds: float = 60.0, max_waiting: int = 256) -> None:
        self.plane = plane
        self.hold_seconds = hold_seconds
        self.max_waiting = max_waiting
        self._session: aiohttp.ClientSession | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, plane: Plane, **bounds: Any) -> Activator:
        """Listen on two loopback ports and tell the plane where (``plane.activator``)."""
        from serving.control.policy.routes import Endpoints

        self = cls(plane, **bounds)
        http_port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self, host="127.0.0.1", port=http_port,
                                                     log_config=None, access_log=False,
                                                     lifespan="off"))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        grpc_port = await self._start_grpc()
        while not self._server.started:
            if self._task.done():
                raise RuntimeError(f"activator could not listen on 127.0.0.1:{http_port}")
            await asyncio.sleep(0.01)
        plane.activator = Endpoints(http=[f"http://127.0.0.1:{http_port}"],
                                    grpc=[f"127.0.0.1:{grpc_port}"])
        return self

    async def _start_grpc(self) -> int:
        self._grpc = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._grpc.add_generic_rpc_handlers((_GrpcSide(self),))
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        if not port:
            raise RuntimeError("activator could not open a gRPC port on 127.0.0.1")
        await self._grpc.start()
        return port

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._session is not None:
            await self._session.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    # -- shared by both protocols -----------------------------------------------------------

    def find(self, model: str) -> tuple[str, str] | None:
        """(service, revision) for a model name that is a revision of some service."""
        for name, state in self.plane.states.items():
            if model in state.revisions:
                return name, model
        return None

    async def replica_for(self, revision: str) -> Replica:
        """Count the request as demand and wait for a ready replica, within both bounds."""
        plane = self.plane
        if sum(plane.waiting.values()) >= self.max_waiting:
            raise NoReplica(f"{self.max_waiting} requests are already waiting for replicas; "
                            "retry shortly")
        plane.waiting[revision] = plane.waiting.get(revision, 0) + 1
        try:
            replica = await self._wait(revision)
        finally:
            plane.waiting[revision] -= 1
        if replica is None:
            raise NoReplica(f"no replica of {revision} became ready within "
                            f"{self.hold_seconds:g} s; retry shortly")
        return replica

    async def _wait(self, revision: str) -> Replica | None:
        deadline = time.monotonic() + self.hold_seconds
        while time.monotonic() < deadline:
            ready = self.plane.supervisor.ready(revision)
            if ready:
                return ready[0]
            await asyncio.sleep(0.05)
        return None

    # -- REST -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path in ("/v2/health/ready", "/v2/health/live", "/v2"):
            return await _answer(send, 200, b'{"ready":true}')
        match = _MODEL.match(path)
        found = self.find(match.group(2)) if match else None
        if match is None or found is None:
            return await _answer(send, 404, b'{"error":"no scaled-to-zero revision here"}')
        service, revision = found
        body = await _body(receive)
        try:
            replica = await self.replica_for(revision)
        except NoReplica as exc:
            return await _answer(send, 503, _error(str(exc)), retry_after=True)
        target = replica.http + path.replace(f"/models/{revision}", f"/models/{service}", 1)
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in _HOP}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(scope["method"], target, data=body,
                                             headers=headers) as response:
                data = await response.read()
                out = [(k.lower().encode(), v.encode()) for k, v in response.headers.items()
                       if k.lower() not in _HOP]
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [*out, (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data})
        except aiohttp.ClientError:
            await _answer(send, 503, _error(f"replica of {revision} did not answer"),
                          retry_after=True)

    # -- gRPC -------------------------------------------------------------------------------

    async def forward_grpc(self, rpc: str, request: bytes, context: Any) -> bytes:
        """One ModelInfer / ModelReady / ModelMetadata call, held and forwarded as bytes."""
        try:
            model, _ = read_name_version(request)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed {rpc} request: {exc}")
        found = self.find(model)
        if found is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND,
                         f"model {model!r} is not a scaled-to-zero revision served here")
        service, revision = found
        try:
            replica = await self.replica_for(revision)
        except NoReplica as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        metadata = [(k, v) for k, v in context.invocation_metadata() or ()
                    if not k.startswith(":") and k not in _GRPC_DROP_METADATA]
        call = self._channel(replica.grpc).unary_unary(f"/{GRPC_SERVICE}/{rpc}")
        try:
            answer: bytes = await call(with_name_version(request, service, None),
                                       timeout=context.time_remaining(), metadata=metadata)
        except grpc.aio.AioRpcError as err:
            await _abort(context, err.code(), err.details() or f"replica of {revision} failed")
        return answer

    def _channel(self, address: str) -> grpc.aio.Channel:
        """One channel per replica address; channels of replicas gone are closed."""
        channel = self._channels.get(address)
        if channel is None:
            live = {r.grpc for rs in self.plane.supervisor.replicas.values() for r in rs}
            for stale in [a for a in self._channels if a not in live]:
                task = asyncio.create_task(self._channels.pop(stale).close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 0)])
        return channel


class _GrpcSide(grpc.GenericRpcHandler):
    """Routes the inference service's RPCs: model calls are held and forwarded, server
    liveness/readiness answered here, the rest (repository administration) unimplemented."""

    def __init__(self, activator: Activator) -> None:
        self.activator = activator

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        prefix, _, name = details.method.rpartition("/")  # type: ignore[attr-defined]
        if prefix != "/" + GRPC_SERVICE:
            return None
        if name in ("ServerLive", "ServerReady"):
            async def ready(request: bytes, context: Any) -> bytes:
                return _SERVER_READY
            return grpc.unary_unary_rpc_method_handler(ready)
        if name in _GRPC_FORWARDED:
            async def forward(request: bytes, context: Any) -> bytes:
                return await self.activator.forward_grpc(name, request, context)
            return grpc.unary_unary_rpc_method_handler(forward)
        return None


async def _abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("abort returned")  # grpc.aio's abort raises


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def _answer(send: Send, status: int, body: bytes, *, retry_after: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
