"""Open Inference Protocol (V2) over REST: JSON bodies and the binary tensor extension.

A binary request is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the
raw tensors in input order, each sized by its ``binary_data_size`` parameter. Numeric tensors are
decoded with ``np.frombuffer`` (no copy); responses serialise numpy arrays straight through orjson.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from serving.protocol.datatypes import array_to_raw, dtype_for, raw_to_array, to_bytes_array
from serving.protocol.errors import InvalidInput
from serving.protocol.templates import RequestTemplate, TemplateCache
from serving.protocol.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
# JSON number kinds that each target kind may take without silent truncation.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def parse_json(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None


def request_to_internal(body: bytes, *, header_length: int | None, model_name: str,
                        model_version: str | None,
                        templates: TemplateCache | None = None) -> InferenceRequest:
    """Decode a V2 infer body (JSON, or JSON header + binary tensors) into the internal type.

    With ``templates``, a binary request whose JSON header was decoded before is built from
    that header's template (serving/protocol/templates.py): the header's bytes are its key."""
    view = memoryview(body)
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {header_length} does not fit a "
                               f"body of {len(body)} bytes")
        if templates is not None:
            head = body[:header_length]
            template = templates.get(head)
            if template is not None:
                request = _from_template(template, view[header_length:], model_name,
                                         model_version)
                if request is not None:
                    return request
            request = _decode(parse_json(view[:header_length]), view[header_length:],
                              model_name, model_version)
            if request.inputs and _all_binary(request):
                templates.remember(head, request)
            return request
        payload, binary = parse_json(view[:header_length]), view[header_length:]
    else:
        payload, binary = parse_json(view), view[0:0]
    return _decode(payload, binary, model_name, model_version)


def _decode(payload: Any, binary: memoryview, model_name: str,
            model_version: str | None) -> InferenceRequest:
    if not isinstance(payload, dict):
        raise InvalidInput("request body must be a JSON object")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("request needs an 'inputs' list")
    offset = 0
    inputs = []
    for index, item in enumerate(raw_inputs):
        tensor, offset = _decode_input(item, index, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"binary data sizes add up to {offset} bytes but the body carries "
                           f"{len(binary)} bytes after the JSON header")
    return InferenceRequest(
        inputs=inputs,
        model_name=model_name,
        model_version=model_version,
        id=_optional_str(payload.get("id"), "id"),
        parameters=_parameters(payload.get("parameters"), "request"),
        outputs=_requested_outputs(payload.get("outputs")),
    )


def _from_template(template: RequestTemplate, binary: memoryview, model_name: str,
                   model_version: str | None) -> InferenceRequest | None:
    """The request a header's template and this body's tensor bytes make; None where the
    bytes do not add up to the template's sizes (the full decode answers that)."""
    raws = []
    offset = 0
    for spec in template.inputs:
        end = offset + spec.nbytes
        raws.append(binary[offset:end])
        offset = end
    if offset != len(binary):
        return None
    return template.build(raws, template.id, model_name, model_version)


def _all_binary(request: InferenceRequest) -> bool:
    """Whether every input came as binary data (a template holds no JSON data)."""
    return all("binary_data_size" in tensor.parameters for tensor in request.inputs)


def response_from_internal(response: InferenceResponse,
                           request: InferenceRequest) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and, if any output is binary, the JSON header length."""
    binary_default = bool(request.parameters.get("binary_data_output", False)) \
        if request.parameters else False
    wanted = {o.name: bool(o.parameters.get("binary_data", binary_default))
              for o in request.outputs} if request.outputs else {}
    chunks: list[bytes] = []
    outputs = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": tensor.shape}
        if tensor.parameters:
            entry["parameters"] = dict(tensor.parameters)
        if wanted.get(tensor.name, binary_default) if wanted else binary_default:
            raw = array_to_raw(tensor.data)
            entry.setdefault("parameters", {})["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name,
                           "model_version": response.model_version, "outputs": outputs}
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    header = orjson.dumps(doc, option=_ORJSON_OPTS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _json_data(tensor: Tensor) -> Any:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    if flat.dtype == np.float16:
        return flat.astype(np.float32)  # orjson has no float16
    return np.ascontiguousarray(flat)


def _decode_input(item: Any, index: int, binary: memoryview,
                  offset: int) -> tuple[Tensor, int]:
    if type(item) is not dict:
        raise InvalidInput(f"inputs[{index}] must be an object")
    name = item.get("name")
    if type(name) is not str or not name:
        raise InvalidInput(f"inputs[{index}] needs a 'name' string")
    datatype = item.get("datatype")
    if type(datatype) is not str:
        raise InvalidInput(f"input '{name}' needs a 'datatype' string")
    dtype = dtype_for(datatype)
    shape = _shape(item.get("shape"), name)
    parameters = item.get("parameters")
    if parameters is None:
        parameters = {}
        size = None
    elif type(parameters) is not dict:
        raise InvalidInput(f"input '{name}': 'parameters' must be an object")
    else:
        size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidInput(f"input '{name}': binary_data_size {size} runs past the end of the "
                               f"body ({len(binary) - offset} bytes left)")
        array = raw_to_array(binary[offset:offset + size], datatype, shape, name=name)
        return Tensor(name, datatype, array, parameters), offset + size
    if "data" not in item:
        raise InvalidInput(f"input '{name}' has neither 'data' nor a binary_data_size")
    return Tensor(name, datatype, _json_to_array(item["data"], datatype, dtype, shape, name),
                  parameters), offset


def _json_to_array(data: Any, datatype: str, dtype: np.dtype, shape: tuple[int, ...],
                   name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    expected = math.prod(shape)
    if datatype == "BYTES":
        try:
            flat = np.asarray(data, dtype=object).reshape(-1)
        except ValueError:
            raise InvalidInput(f"input '{name}': nested data is ragged") from None
        _check_count(flat.size, expected, shape, name)
        return to_bytes_array(flat, shape)
    try:
        decoded = np.asarray(data)
    except (ValueError, OverflowError):
        raise InvalidInput(f"input '{name}': data is ragged or not numeric") from None
    if decoded.dtype.kind in "fO" and dtype.kind in "iu":
        decoded = _exact_integers(data, decoded)  # e.g. UINT64 values above INT64's range
    if decoded.size and decoded.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(f"input '{name}': {datatype} data must be "
                           f"{'booleans' if dtype.kind == 'b' else 'numbers'}, got "
                           f"{_kind_name(decoded.dtype)}")
    _check_count(decoded.size, expected, shape, name)
    if dtype.kind in "iu" and decoded.dtype != dtype and decoded.size:
        info = np.iinfo(dtype)  # a cast would wrap silently: INT8 300 is not 44
        if decoded.min() < info.min or decoded.max() > info.max:
            raise InvalidInput(f"input '{name}': values out of range for {datatype}")
    try:
        return decoded.astype(dtype, copy=False).reshape(shape)
    except OverflowError:
        raise InvalidInput(f"input '{name}': values out of range for {datatype}") from None


def _exact_integers(data: list[Any], decoded: np.ndarray) -> np.ndarray:
    """Integers numpy could not hold in int64 arrive as float or object; keep them exact."""
    flat = np.asarray(data, dtype=object).reshape(-1)
    if flat.size and all(type(v) is int for v in flat):  # (no data: nothing to keep exact)
        return np.array(flat.tolist(), dtype=np.uint64).reshape(decoded.shape) if (
            min(flat) >= 0) else decoded
    return decoded


def _kind_name(dtype: np.dtype) -> str:
    return {"U": "strings", "f": "floating-point numbers", "O": "mixed values",
            "b": "booleans"}.get(dtype.kind, "integers")


def _check_count(count: int, expected: int, shape: tuple[int, ...], name: str) -> None:
    if count != expected:
        raise InvalidInput(f"input '{name}': {count} data elements do not match shape "
                           f"{list(shape)} ({expected} expected)")


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if type(value) is list:
        for dim in value:  # a loop, not all(genexpr): this runs for every input of every request
            if type(dim) is not int or dim < 0:  # type(): bool is an int subclass, and refused
                break
        else:
            return tuple(value)
    raise InvalidInput(f"input '{name}' needs a 'shape' list of non-negative integers")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    return value


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"'{field}' must be a string")


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] needs a 'name' string")
        outputs.append(RequestedOutput(item["name"],
                                       _parameters(item.get("parameters"), f"output '{item['name']}'")))
    return outputs
