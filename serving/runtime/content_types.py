"""Content types: how a tensor's wire data becomes what a model consumes, and back.

The Open Inference Protocol carries typed tensors; ``parameters.content_type`` on a request, on
one of its inputs, or declared in ``model-settings.yaml`` says how to read them:

``np``
    a numpy array, as it arrived (the default).
``str``
    a BYTES tensor of UTF-8 text: elements become Python ``str``.
``base64``
    a BYTES tensor of base64 text: elements become the decoded ``bytes``.
``pd``
    the inputs together are one table: each named input is a column of a ``pandas.DataFrame``
    (scikit-learn pipelines with a ``ColumnTransformer`` select columns by name).

Outputs declared with a content type are encoded back the same way: ``str`` outputs leave as
UTF-8 text, ``base64`` outputs as base64 text, a DataFrame as one output per column.

This module imports pandas only when a table is built, so numpy-only servers never load it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serving.protocol.errors import InvalidInput

CONTENT_TYPES = ("np", "pd", "str", "base64")
# Content types that change the elements of one tensor (``pd`` changes how tensors combine).
TENSOR_CODECS = frozenset({"str", "base64"})


def decode_tensor(name: str, array: np.ndarray, content_type: str | None) -> np.ndarray:
    """Apply an input's content type to its elements; ``np``, ``pd`` and None leave it as is."""
    if content_type not in TENSOR_CODECS:
        if content_type is not None and content_type not in CONTENT_TYPES:
            raise InvalidInput(f"input '{name}': unknown content_type {content_type!r}; "
                               f"expected one of {', '.join(CONTENT_TYPES)}")
        return array
    if array.dtype != object:
        raise InvalidInput(f"input '{name}': content_type {content_type} needs a BYTES tensor, "
                           f"not {array.dtype}")
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    try:
        if content_type == "str":
            for i, item in enumerate(flat_in):
                flat_out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        else:
            for i, item in enumerate(flat_in):
                flat_out[i] = base64.b64decode(item, validate=True)
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}' is not valid UTF-8 (content_type str)") from None
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInput(f"input '{name}' is not valid base64 (content_type base64): "
                           f"{exc}") from None
    return out


def encode_tensor(name: str, value: Any, content_type: str | None) -> np.ndarray:
    """An output as an array ready for the wire, encoded per its content type."""
    array = value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    if content_type == "str":
        out = np.empty(array.shape, dtype=object)
        for i, item in enumerate(array.reshape(-1)):
            out.reshape(-1)[i] = item if isinstance(item, bytes) else str(item).encode("utf-8")
        return out
    if content_type == "base64":
        out = np.empty(array.shape, dtype=object)
        for i, item in enumerate(array.reshape(-1)):
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            out.reshape(-1)[i] = base64.b64encode(raw)
        return out
    if array.dtype.kind == "U":
        return array.astype(object)
    return array


def to_frame(inputs: Mapping[str, np.ndarray], columns: Sequence[str] | None = None) -> Any:
    """Named inputs as DataFrame columns, in ``columns`` order when given.

    A column takes a ``[rows]`` or ``[rows, 1]`` tensor; BYTES columns become ``str`` where
    they are UTF-8 (what scikit-learn's encoders were fitted on).
    """
    import pandas as pd

    order = list(columns) if columns is not None else list(inputs)
    data: dict[str, Any] = {}
    for name in order:
        array = inputs[name]
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        elif array.ndim != 1:
            raise InvalidInput(f"input '{name}' has shape {list(array.shape)}; a DataFrame "
                               "column (content_type pd) takes shape [rows] or [rows, 1]")
        if array.dtype == object:
            array = _text(array)
        data[name] = array
    return pd.DataFrame(data, columns=order, copy=False)


def from_frame(frame: Any) -> dict[str, np.ndarray]:
    """A DataFrame result as one output per column (strings as Python ``str``)."""
    return {str(column): encode_tensor(str(column), frame[column].to_numpy(), None)
            for column in frame.columns}


def _text(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    for i, item in enumerate(array):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                pass
        out[i] = item
    return out
