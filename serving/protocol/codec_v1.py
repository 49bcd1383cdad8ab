"""KServe's V1 protocol: ``{"instances": [...]}`` or ``{"inputs": [...]}`` in, ``{"predictions"}`` out.

V1 carries one untyped tensor, so its datatype is inferred from the JSON (numbers, booleans,
strings) and the data plane converts it safely to the model's declared input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serving.protocol.codec_v2 import parse_json
from serving.protocol.datatypes import datatype_of, to_bytes_array
from serving.protocol.errors import InvalidInput
from serving.protocol.types import InferenceRequest, InferenceResponse, Tensor

V1_INPUT_NAME = "input-0"


def request_to_internal(body: bytes, *, model_name: str) -> InferenceRequest:
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput("request body must be a JSON object")
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise InvalidInput("V1 request needs 'instances' or 'inputs'")
    rows = payload[key]
    if not isinstance(rows, list):
        raise InvalidInput(f"'{key}' must be a list")
    if not rows:
        raise InvalidInput(f"'{key}' is an empty batch")
    try:
        array = np.asarray(rows)
    except (ValueError, OverflowError):
        raise InvalidInput(f"'{key}' rows are ragged or of mixed types") from None
    if array.dtype.kind == "U":
        array = to_bytes_array(array, array.shape)
    elif array.dtype.kind not in "biuf":
        raise InvalidInput(f"'{key}' must hold numbers, booleans or strings")
    return InferenceRequest(inputs=[Tensor(V1_INPUT_NAME, datatype_of(array), array)],
                            model_name=model_name)


def response_from_internal(response: InferenceResponse) -> bytes:
    first = response.outputs[0].data
    if first.dtype.kind == "O":
        predictions: Any = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                            for x in first.reshape(-1)]
        predictions = np.asarray(predictions, dtype=object).reshape(first.shape).tolist()
    elif first.dtype == np.float16:
        predictions = first.astype(np.float32)
    else:
        predictions = np.ascontiguousarray(first)
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
