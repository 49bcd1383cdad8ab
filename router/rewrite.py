"""Minimal message edits: model names in protobuf bytes and in V2 JSON headers.

gRPC messages are forwarded as bytes. Routing needs only ``model_name`` (field 1) and
``model_version`` (field 2) of ModelInferRequest / ModelReadyRequest / ModelMetadataRequest,
so this module reads those two fields by walking the wire format (skipping tensors by length,
never decoding them) and rewrites them by *appending* new values: protobuf's rule that the
last occurrence of a singular field wins makes the append exact, and it copies no tensor data
into a new message structure.
"""

from __future__ import annotations

import orjson

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def read_name_version(message: bytes) -> tuple[str, str]:
    """Fields 1 and 2 (strings) of a top-level message; later occurrences win, as in protobuf."""
    view = memoryview(message)
    name = version = ""
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(view, pos)
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        elif wire == _LEN:
            length, pos = _varint(view, pos)
            if field in (1, 2):
                value = bytes(view[pos:pos + length]).decode("utf-8", "replace")
                if field == 1:
                    name = value
                else:
                    version = value
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(view):
            raise ValueError("truncated message")
    return name, version


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def string_field(field: int, value: str) -> bytes:
    data = value.encode()
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(data)) + data


def with_name_version(message: bytes, name: str | None, version: str | None) -> bytes:
    """``message`` with fields 1/2 replaced (``None`` leaves a field as it is)."""
    tail = b""
    if name is not None:
        tail += string_field(1, name)
    if version is not None:
        tail += string_field(2, version)
    return message + tail if tail else message


def rename_v2_json(body: bytes, header_length: int | None, name: str) -> tuple[bytes, int | None]:
    """Set ``model_name`` (infer) or ``name`` (metadata) in a V2 JSON body or binary header."""
    head = body if header_length is None else body[:header_length]
    doc = orjson.loads(head)
    if not isinstance(doc, dict):
        return body, header_length
    key = "model_name" if "model_name" in doc else "name" if "name" in doc else None
    if key is None:
        return body, header_length
    doc[key] = name
    new_head = orjson.dumps(doc)
    if header_length is None:
        return new_head, None
    return new_head + body[header_length:], len(new_head)
