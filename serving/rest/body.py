"""Reading request bodies under the configured payload limit, before any parsing."""

from __future__ import annotations

from starlette.requests import Request

from ..protocol.errors import InvalidInput, PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is counted as it streams, so an oversized upload never sits in memory whole.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number") from None
        if length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header_length(request: Request) -> int | None:
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput("Inference-Header-Content-Length is not a number") from None
