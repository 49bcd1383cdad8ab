"""Request header blocks: HPACK decoding (the ``hpack`` package) with a cache for repeats.

A gRPC client sends the same header block again and again: after its first call each field is
an index into the connection's dynamic table or a literal that is never added to it (nghttp2,
and so h2load, never indexes ``:path``). Such a block leaves the table as it was, so decoding
it again gives the same headers for as long as no other block changed the table. ``hpack``
took ~15-35 us to decode an all-indexed block of 8 fields and ~40 us with a Huffman-coded
``:path`` literal (pure Python), so table-neutral blocks are looked up by their bytes.
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


_CACHED_BLOCK_BYTES = 1024  # longer blocks are decoded each time: bounded memory per connection
_CACHED_BLOCKS = 64


def _integer(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    """The RFC 7541 §5.1 integer at ``block[i]`` with a ``prefix``-bit mask, and the offset
    after it; (-1, i) for one longer than 4 continuation bytes (not a header we cache)."""
    value = block[i] & prefix
    i += 1
    if value < prefix:
        return value, i
    end, shift = min(i + 4, len(block)), 0
    while i < end:
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i
    return -1, i


def _table_neutral(block: bytes) -> bool:
    """Whether decoding ``block`` leaves the dynamic table unchanged: every field is indexed
    (RFC 7541 §6.1) or a literal without indexing or never indexed (§6.2.2, §6.2.3); no literal
    with incremental indexing (§6.2.1) and no table size update (§6.3). A malformed block is
    reported as not neutral (the decoder raises for it)."""
    i, n = 0, len(block)
    while i < n:
        byte = block[i]
        if byte & 0x80:
            index, i = _integer(block, i, 0x7F)
            if index < 0:
                return False
            continue
        if byte & 0xE0:  # 01xxxxxx adds to the table, 001xxxxx resizes it
            return False
        name, i = _integer(block, i, 0x0F)
        strings = 2 if name == 0 else 1 if name > 0 else 0
        if not strings:
            return False
        for _ in range(strings):
            if i >= n:
                return False
            length, i = _integer(block, i, 0x7F)
            if length < 0:
                return False
            i += length
        if i > n:
            return False
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
        if len(block) <= _CACHED_BLOCK_BYTES and _table_neutral(block):
            if len(self._cache) >= _CACHED_BLOCKS:
                self._cache.clear()
            self._cache[block] = (self._generation, headers)
        else:  # the table may have changed: cached index lists may now mean else
            self._generation += 1
        return headers
