"""Small pieces of raw-ASGI HTTP: bounded body reading, header filtering, JSON replies.

The router's REST edge is raw ASGI (no framework) because every microsecond on the hop is paid
by every request; these helpers keep that edge readable.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import Receive, Send

from serving.protocol.errors import InvalidInput, PayloadTooLarge, TurnoutError

# Connection-scoped headers a proxy must not forward (RFC 9110 §7.6.1), plus those the client
# library recomputes for the new message.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length", "expect",
})
RESPONSE_DROP = HOP_BY_HOP | {"date", "server", "x-request-id", "x-turnout-variant"}
VARIANT_HEADER = "x-turnout-variant"


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole request body, or 413 as soon as it is known to exceed ``limit``."""
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        if length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def forward_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers
            if k.decode("latin-1") not in HOP_BY_HOP]


async def send_response(send: Send, status: int, body: bytes,
                        headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: object,
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_response(send, status, orjson.dumps(doc),
                        [(b"content-type", b"application/json"), *headers])


def with_retry_after(err: BaseException, headers: list[tuple[bytes, bytes]]
                     ) -> list[tuple[bytes, bytes]]:
    """``headers``, plus ``Retry-After`` for an error a client should retry later (a request
    held for a ready endpoint past its bounds, router/hold.py)."""
    seconds = getattr(err, "retry_after", None)
    if seconds is not None:
        headers.append((b"retry-after", str(seconds).encode()))
    return headers


async def send_error(send: Send, err: TurnoutError,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_json(send, err.http_status, {"error": str(err)}, headers)
