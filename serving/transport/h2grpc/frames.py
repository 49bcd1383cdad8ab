"""HTTP/2 frame layout (RFC 9113 §4, §6) and the few HPACK encodings a gRPC server sends.

Frames are built and read with one ``struct`` call each. Responses never use HPACK's dynamic
table (every field is a literal "without indexing", RFC 7541 §6.2.2), so the server keeps no
encoder state and the success path's header blocks are constants built once.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT = 0, 1, 2, 3, 4
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 5, 6, 7, 8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11

# settings identifiers (RFC 9113 §6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 1, 2, 3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 4, 5, 6

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

HEAD = struct.Struct(">IBI")  # 24-bit length and 8-bit type in one word, flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return HEAD.pack((len(payload) << 8) | kind, flags, stream) + payload


def settings(values: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload) - 5, 6)]


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, _U32.pack(increment))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, _U32.pack(code))


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream, code) + debug)


def u32(payload: bytes | bytearray | memoryview, offset: int = 0) -> int:
    return int(_U32.unpack_from(payload, offset)[0])


# -- HPACK literals (RFC 7541 §5.1, §5.2, §6.2.2): never indexed, never Huffman-coded ---------

def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7) + data


def literal(name: bytes, value: bytes) -> bytes:
    """``name: value`` as a literal field without indexing, with a literal name."""
    return b"\x00" + _string(name) + _string(value)


STATUS_200 = b"\x88"  # :status 200, static table index 8
# content-type (static index 31) application/grpc, without indexing
CONTENT_TYPE_GRPC = _integer(31, 4) + _string(b"application/grpc")
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC
STATUS_OK = literal(b"grpc-status", b"0")


def metadata_block(metadata: Iterable[tuple[str, str | bytes]]) -> bytes:
    """Custom metadata as header fields: ``-bin`` values base64 (unpadded, as gRPC sends),
    names lower-cased."""
    import base64

    out = []
    for key, value in metadata:
        name = key.lower().encode("latin-1")
        if name.endswith(b"-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            data = base64.b64encode(raw).rstrip(b"=")
        else:
            data = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
        out.append(literal(name, data))
    return b"".join(out)


def percent_encoded(message: str) -> bytes:
    """grpc-message's encoding: UTF-8, with bytes outside printable ASCII and '%' escaped."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_block(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encoded(message[:4096]))
    return block


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float | None:
    """grpc-timeout (``1S``, ``250m``, up to 8 digits and a unit) in seconds; None when
    malformed (the call then runs without a deadline, as grpcio does)."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit
