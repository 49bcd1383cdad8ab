"""The activator: where a scaled-to-zero revision's traffic goes while a replica starts.

Knative's idea, locally: the routes point a revision at zero replicas to this loopback server
(under the revision's name as the model name). A request here counts as demand (the
autoscaler asks for a replica at once), waits until a replica is ready, and is then forwarded
to it. The wait is bounded in time (``hold_seconds``) and in size (``max_waiting``); beyond
either the answer is 503 with ``Retry-After`` — never a 4xx "not ready", which clients would
not retry. REST only: a gRPC request to a revision at zero gets UNAVAILABLE from the router,
which gRPC clients retry (see docs/control-plane.md for what the router would need).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send

from .supervisor import free_port

if TYPE_CHECKING:
    from .plane import Plane

_MODEL = re.compile(r"^/(v1|v2)/models/([^/:]+)")
_HOP = {"content-length", "transfer-encoding", "connection", "host", "keep-alive"}


class Activator:
    def __init__(self, plane: Plane, *, hold_seconds: float = 60.0, max_waiting: int = 256) -> None:
        self.plane = plane
        self.hold_seconds = hold_seconds
        self.max_waiting = max_waiting
        self._session: aiohttp.ClientSession | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, plane: Plane) -> Activator:
        self = cls(plane)
        port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self, host="127.0.0.1", port=port,
                                                     log_config=None, access_log=False,
                                                     lifespan="off"))
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        from .routes import Endpoints

        plane.activator = Endpoints(http=[f"http://127.0.0.1:{port}"])
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path in ("/v2/health/ready", "/v2/health/live", "/v2"):
            return await _answer(send, 200, b'{"ready":true}')
        match = _MODEL.match(path)
        found = self._find(match.group(2)) if match else None
        if match is None or found is None:
            return await _answer(send, 404, b'{"error":"no scaled-to-zero revision here"}')
        service, revision = found
        body = await _body(receive)
        plane = self.plane
        if sum(plane.waiting.values()) >= self.max_waiting:
            return await _answer(send, 503, b'{"error":"too many requests waiting for a replica"}',
                                 retry_after=True)
        plane.waiting[revision] = plane.waiting.get(revision, 0) + 1
        try:
            replica = await self._wait(revision)
        finally:
            plane.waiting[revision] -= 1
        if replica is None:
            return await _answer(send, 503, b'{"error":"no replica became ready in time"}',
                                 retry_after=True)
        target = replica + path.replace(f"/models/{revision}", f"/models/{service}", 1)
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
            await _answer(send, 503, b'{"error":"replica did not answer"}', retry_after=True)

    def _find(self, model: str) -> tuple[str, str] | None:
        for name, state in self.plane.states.items():
            if model in state.revisions:
                return name, model
        return None

    async def _wait(self, revision: str) -> str | None:
        deadline = time.monotonic() + self.hold_seconds
        while time.monotonic() < deadline:
            ready = self.plane.supervisor.ready(revision)
            if ready:
                return ready[0].http
            await asyncio.sleep(0.05)
        return None


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
