"""Request header blocks: HPACK decoding (the ``hpack`` package) with a cache for repeats.

A gRPC client sends the same header block again and again: after its first call every field is
an index into the connection's dynamic table (nghttp2, grpc-core and grpc-go all do this), and
such a block does not change the table. ``hpack`` took ~15-35 us to decode one (measured for
8 fields), so a block made only of indexed fields is looked up by its bytes, and the cache is
valid for as long as no other block has changed the table.
"""

from __future__ import annotations

import hpack

from serving.transport.h2grpc.frames import COMPRESSION_ERROR


class HeaderError(Exception):
    """A header block that breaks the connection (HPACK state is lost): GOAWAY ``code``."""

    def __init__(self, message: str, code: int = COMPRESSION_ERROR) -> None:
        super().__init__(message)
        self.code = code


Headers = list[tuple[bytes, bytes]]


def _only_indexed(block: bytes) -> bool:
    """Whether every field of ``block`` is an indexed field (RFC 7541 §6.1)."""
    i, n = 0, len(block)
    while i < n:
        byte = block[i]
        if not byte & 0x80:
            return False
        i += 1
        if byte & 0x7F == 0x7F:  # a multi-byte index
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return True


class HeaderDecoder:
    """One connection's HPACK decoder, bounded by ``max_list_bytes`` of decoded headers."""

    __slots__ = ("_decoder", "_cache", "_generation", "max_list_bytes")

    def __init__(self, max_list_bytes: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_list_bytes)
        self.max_list_bytes = max_list_bytes
        self._cache: dict[bytes, tuple[int, Headers]] = {}
        self._generation = 0

    def decode(self, block: bytes) -> Headers:
        cached = self._cache.get(block)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        try:
            headers: Headers = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except hpack.OversizedHeaderListError:
            raise HeaderError(f"request headers larger than {self.max_list_bytes} bytes",
                              ) from None
        except (hpack.HPACKError, IndexError, ValueError) as exc:
            raise HeaderError(f"undecodable request headers: {exc}") from None
        if _only_indexed(block):
            if len(self._cache) >= 64:
                self._cache.clear()
            self._cache[block] = (self._generation, headers)
        else:  # literals may have added to the table: cached index lists may now mean else
            self._generation += 1
        return headers
