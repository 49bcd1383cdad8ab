"""Open Inference Protocol datatypes and their numpy equivalents.

BYTES tensors are numpy ``object`` arrays whose elements are ``bytes``; every other datatype
maps to one fixed-size numpy dtype, so tensors can be decoded with ``np.frombuffer``.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from serving.protocol.errors import InvalidInput

DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = frozenset(DATATYPE_TO_DTYPE)
_DTYPE_TO_DATATYPE = {dt: name for name, dt in DATATYPE_TO_DTYPE.items() if name != "BYTES"}
# Byte-order marks that mean little-endian: "<", "|" (single bytes) and, here, native "=".
_WIRE_ORDER = frozenset("<|=" if sys.byteorder == "little" else "<|")
# The wire layout is little-endian whatever the machine; built once, not per tensor.
_LITTLE_ENDIAN = {name: dt.newbyteorder("<") for name, dt in DATATYPE_TO_DTYPE.items()
                  if name != "BYTES"}


def dtype_for(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype; a client mistake if the name is not in the protocol."""
    try:
        return DATATYPE_TO_DTYPE[datatype]
    except (KeyError, TypeError):
        raise InvalidInput(
            f"unsupported datatype {datatype!r}; expected one of {', '.join(sorted(DATATYPES))}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype for a numpy array (strings and objects are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _DTYPE_TO_DATATYPE[array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


def can_convert(source: str, target: str) -> bool:
    """Whether data of ``source`` datatype may be given to a model input of ``target`` datatype.

    Liberal where it is safe: any numeric type within the same kind (FP64 → FP32, INT64 → INT32)
    and integers or booleans to floats. Never floats to integers (that would truncate silently)
    and never BYTES to numbers or back.
    """
    if source == target:
        return True
    if "BYTES" in (source, target):
        return False
    src, dst = DATATYPE_TO_DTYPE[source], DATATYPE_TO_DTYPE[target]
    if dst.kind == "f":
        return src.kind in "biuf"
    if dst.kind in "iu":
        return src.kind in "biu"
    return False  # BOOL targets take only BOOL


def to_bytes_array(values: object, shape: tuple[int, ...]) -> np.ndarray:
    """Build a BYTES tensor from a flat or nested list of str/bytes."""
    flat = np.asarray(values, dtype=object).reshape(-1)
    out = np.empty(flat.shape[0], dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            out[i] = item
        elif isinstance(item, str):
            out[i] = item.encode()
        else:
            raise InvalidInput(f"BYTES data must be strings, got {type(item).__name__}")
    return out.reshape(shape)


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """The protocol's raw BYTES layout: each element as a 4-byte little-endian length + bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(raw).to_bytes(4, "little"))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes_tensor(raw: bytes | memoryview, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`serialize_bytes_tensor`, checking lengths against the buffer."""
    view = memoryview(raw)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInput("BYTES tensor is truncated: incomplete length prefix")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > end:
            raise InvalidInput("BYTES tensor is truncated: element longer than the buffer")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    expected = math.prod(shape)
    if len(items) != expected:
        raise InvalidInput(f"BYTES tensor holds {len(items)} elements but shape {list(shape)} "
                           f"needs {expected}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def raw_to_array(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...],
                 *, name: str) -> np.ndarray:
    """Decode one tensor's raw bytes (binary extension or gRPC raw contents) without copying."""
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, shape)
    dtype = _LITTLE_ENDIAN.get(datatype)
    if dtype is None:
        dtype = dtype_for(datatype)  # raises the client error for an unknown name
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': {len(raw)} bytes of raw data do not match shape {list(shape)} "
            f"of {datatype} ({count * dtype.itemsize} bytes expected)"
        )
    return np.ndarray(shape, dtype, raw)  # a view: one call instead of frombuffer + reshape


def array_to_raw(array: np.ndarray) -> bytes:
    """Encode a tensor in the protocol's raw little-endian layout."""
    dtype = array.dtype
    if dtype.kind in ("O", "S", "U"):
        return serialize_bytes_tensor(array)
    if dtype.byteorder in _WIRE_ORDER:  # already the wire layout
        return array.tobytes()  # tobytes() copies in C order whatever the strides
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
