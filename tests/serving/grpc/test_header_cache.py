"""The loop engine's header decoder: cached blocks decode exactly as a fresh HPACK decoder does.

Blocks are made by ``hpack``'s own encoder (and by hand for the representations it does not
emit), and every decode is compared with an uncached ``hpack.Decoder`` fed the same blocks.
"""

from __future__ import annotations

import hpack
import pytest

from serving.transport.h2grpc import headers as module
from serving.transport.h2grpc.headers import HeaderDecoder, HeaderError

GRPC_HEADERS = [(b":method", b"POST"), (b":scheme", b"http"),
                (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
                (b":authority", b"127.0.0.1:8081"), (b"te", b"trailers"),
                (b"content-type", b"application/grpc")]


def _literal(name_index: int, value: bytes, *, never: bool = False) -> bytes:
    """A literal field without indexing (or never indexed) naming a table entry, raw value."""
    assert name_index < 15 and len(value) < 127
    return bytes([(0x10 if never else 0x00) | name_index, len(value)]) + value


def _indexed(index: int) -> bytes:
    assert index < 127
    return bytes([0x80 | index])


def _decode_both(decoder: HeaderDecoder, reference: hpack.Decoder, block: bytes) -> list:
    got = decoder.decode(block)
    assert got == reference.decode(block, raw=True)
    return got


def test_a_block_with_a_path_literal_is_cached_like_h2load_sends_it() -> None:
    # nghttp2 indexes everything but :path, which it sends as a literal without indexing
    # naming static entry 4 (":path"): after the first call the block is indexes + one literal.
    path = b"/inference.GRPCInferenceService/ModelInfer"
    block = _indexed(3) + _indexed(6) + _literal(4, path) + _indexed(62) + _indexed(63)
    encoder = hpack.Encoder()
    first = encoder.encode([(b"content-type", b"application/grpc"), (b"te", b"trailers")])
    decoder, reference = HeaderDecoder(65536), hpack.Decoder()
    _decode_both(decoder, reference, first)
    assert module._table_neutral(block)
    once = _decode_both(decoder, reference, block)
    assert (b":path", path) in once
    assert decoder.decode(block) is once  # the second decode is the cached list


def test_cached_blocks_are_dropped_when_another_block_changes_the_table() -> None:
    encoder = hpack.Encoder()
    decoder, reference = HeaderDecoder(65536), hpack.Decoder()
    first = encoder.encode(GRPC_HEADERS)
    _decode_both(decoder, reference, first)
    repeat = encoder.encode(GRPC_HEADERS)
    assert module._table_neutral(repeat)
    before = _decode_both(decoder, reference, repeat)
    # a block that indexes a new field shifts every dynamic index by one: the same bytes of
    # ``repeat`` now name other entries, and the cache must not answer with the old list
    _decode_both(decoder, reference, encoder.encode([(b"x-new", b"1")]))
    after = _decode_both(decoder, reference, repeat)
    assert after != before


def test_a_table_size_update_is_not_neutral() -> None:
    decoder, reference = HeaderDecoder(65536), hpack.Decoder()
    encoder = hpack.Encoder()
    _decode_both(decoder, reference, encoder.encode(GRPC_HEADERS))
    repeat = encoder.encode(GRPC_HEADERS)
    cached = _decode_both(decoder, reference, repeat)
    resize = bytes([0x20])  # size update to 0 empties the dynamic table
    assert not module._table_neutral(resize + _indexed(2))
    _decode_both(decoder, reference, resize + _indexed(2))
    with pytest.raises(HeaderError):  # the indexes in ``repeat`` now point past the table
        decoder.decode(repeat)
    assert cached


def test_never_indexed_and_new_name_literals_are_neutral_and_decode_the_same() -> None:
    block = (_indexed(3) + _literal(4, b"/a/B", never=True)
             + bytes([0x00, 4]) + b"x-id" + bytes([3]) + b"abc")  # a new name, not indexed
    assert module._table_neutral(block)
    decoder, reference = HeaderDecoder(65536), hpack.Decoder()
    for _ in range(3):
        assert _decode_both(decoder, reference, block)[-1] == (b"x-id", b"abc")


@pytest.mark.parametrize("block", [
    bytes([0x40, 1]) + b"a" + bytes([1]) + b"b",  # literal with incremental indexing
    bytes([0x04, 0x7F]),                           # a value length past the block
    bytes([0x04]),                                 # a literal cut before its value
    bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),   # an index longer than 4 continuation bytes
    bytes([0x0F, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),   # a name index too long to read
])
def test_malformed_or_table_changing_blocks_are_not_cached(block: bytes) -> None:
    assert not module._table_neutral(block)


def test_garbage_is_still_a_header_error_and_never_cached() -> None:
    decoder = HeaderDecoder(65536)
    for _ in range(2):
        with pytest.raises(HeaderError):
            decoder.decode(bytes([0x04, 0x7F]))
    assert decoder._cache == {}


def test_the_cache_is_bounded_per_connection() -> None:
    decoder = HeaderDecoder(65536)
    long_value = b"v" * 1100
    big = bytes([0x00, 4]) + b"x-id" + bytes([0x7F]) + bytes([1100 - 127 & 0x7F | 0x80,
                                                              (1100 - 127) >> 7]) + long_value
    assert decoder.decode(big)[-1] == (b"x-id", long_value)
    assert decoder._cache == {}  # over the cached block size: decoded, not kept
    for n in range(200):
        decoder.decode(_literal(4, f"/s/{n}".encode()))
        assert len(decoder._cache) <= module._CACHED_BLOCKS


def test_a_calls_head_is_read_once_per_header_list_and_the_table_is_bounded() -> None:
    from serving.transport.h2grpc import calls

    steady = [(b":method", b"POST"), (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
              (b"content-type", b"application/grpc"), (b"grpc-timeout", b"250m"),
              (b"grpc-encoding", b"gzip")]
    head = calls._request_head(steady)
    assert head == ("/inference.GRPCInferenceService/ModelInfer", b"POST",
                    b"application/grpc", 0.25, b"gzip")
    assert calls._HEADS[id(steady)] == (steady, head)
    # the same list: read once (the decoder never changes a list it handed out; changed here,
    # the change goes unread, which shows the second call did not read it)
    steady[1] = (b":path", b"/changed")
    assert calls._request_head(steady) == head
    other = [(b":method", b"GET"), (b":path", b"/x"), (b"content-type", b"text/plain")]
    assert calls._request_head(other) == ("/x", b"GET", b"text/plain", None, b"identity")
    lists = [[(b":path", b"/%d" % i)] for i in range(calls._MAX_HEADS * 2)]
    for i, headers in enumerate(lists):
        assert calls._request_head(headers)[0] == f"/{i}"
        assert len(calls._HEADS) <= calls._MAX_HEADS
