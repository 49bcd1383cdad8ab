"""Reading request bodies straight from ASGI ``receive`` under the configured payload limit."""

from __future__ import annotations

from starlette.types import Receive

from serving.protocol.errors import InvalidInput, PayloadTooLarge


async def read_body(receive: Receive, *, declared: bytes | None, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is counted as it streams, so an oversized upload never sits in memory whole.
    """
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        if length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the {limit}-byte limit")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        return body  # type: ignore[no-any-return]
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_header_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput("Inference-Header-Content-Length is not a number") from None
