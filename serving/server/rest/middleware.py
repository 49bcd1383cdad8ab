"""Pure ASGI middleware: request ids for logs and responses."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.transport.logs import request_id_var


class RequestIdMiddleware:
    """Takes ``x-request-id`` from the client (or makes one), puts it in the logging context
    and echoes it on the response, so one request can be followed through every log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value[:128]
                break
        if not rid:
            rid = uuid.uuid4().hex.encode()
        token = request_id_var.set(rid.decode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
