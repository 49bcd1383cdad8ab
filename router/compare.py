"""Comparing a shadow's answer with the primary's: class agreement and numeric difference.

Runs only in shadow tasks, after the primary answer has been sent, so decoding here never
costs the client anything. Outputs are matched by name; integer, boolean and string outputs
count as classes (exact match per element), floating outputs as numbers (|a - b| per element).
Outputs whose shapes differ are not compared (a shape change is a bug, not a difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from serving.protocol import proto
from serving.protocol.codec_grpc import TYPED_FIELD
from serving.protocol.datatypes import dtype_for, raw_to_array, to_bytes_array

Outputs = dict[str, np.ndarray]


@dataclass
class Comparison:
    class_total: int = 0
    class_agreed: int = 0
    numeric_total: int = 0
    abs_diff_sum: float = 0.0
    # numeric elements outside ``np.isclose`` (rtol 1e-5, atol 1e-6): float answers of two
    # revisions differ in the last bits without disagreeing
    numeric_disagreed: int = 0
    # the decoded answers, kept for the disagreement log (router/disagreements.py)
    primary: Outputs | None = None
    shadow: Outputs | None = None

    @property
    def disagrees(self) -> bool:
        return self.class_agreed < self.class_total or self.numeric_disagreed > 0


def compare_outputs(primary: Outputs, shadow: Outputs) -> Comparison:
    result = Comparison(primary=primary, shadow=shadow)
    for name, a in primary.items():
        b = shadow.get(name)
        if b is None or a.shape != b.shape:
            continue
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            result.numeric_total += int(diff.size)
            result.abs_diff_sum += float(np.nansum(diff))
            result.numeric_disagreed += int(diff.size - np.count_nonzero(np.isclose(
                a.astype(np.float64), b.astype(np.float64), rtol=1e-5, atol=1e-6,
                equal_nan=True)))
        else:
            result.class_total += int(a.size)
            result.class_agreed += int(np.count_nonzero(a == b))
    return result


def v2_outputs(body: bytes, header_length: int | None) -> Outputs:
    """Outputs of a V2 REST response, JSON or binary."""
    view = memoryview(body)
    head = orjson.loads(view[:header_length] if header_length is not None else view)
    offset = header_length or 0
    out: Outputs = {}
    for item in head.get("outputs", []):
        shape = tuple(int(d) for d in item["shape"])
        datatype = item["datatype"]
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[item["name"]] = raw_to_array(view[offset:offset + size], datatype, shape,
                                             name=item["name"])
            offset += size
        elif datatype == "BYTES":
            out[item["name"]] = to_bytes_array(item["data"], shape)
        else:
            out[item["name"]] = np.asarray(item["data"], dtype=dtype_for(datatype)).reshape(shape)
    return out


def v1_outputs(body: bytes) -> Outputs:
    predictions = orjson.loads(body).get("predictions")
    return {} if predictions is None else {"predictions": np.asarray(predictions)}


def grpc_outputs(body: bytes) -> Outputs:
    message = proto.ModelInferResponse.FromString(body)
    out: Outputs = {}
    raw = list(message.raw_output_contents)
    for index, tensor in enumerate(message.outputs):
        shape = tuple(tensor.shape)
        if index < len(raw):
            out[tensor.name] = raw_to_array(raw[index], tensor.datatype, shape, name=tensor.name)
        else:
            values = list(getattr(tensor.contents, TYPED_FIELD.get(tensor.datatype, "fp32_contents")))
            out[tensor.name] = np.asarray(values).reshape(shape)
    return out
