"""Checks a decoded request against a model's declared inputs and outputs.

Everything a client can get wrong about a model's data is caught here, once, for every
protocol, so runtimes receive arrays of exactly the declared datatype and shape.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from serving.protocol.datatypes import DATATYPE_TO_DTYPE, can_convert
from serving.protocol.errors import InvalidInput
from serving.protocol.types import InferenceRequest, Tensor, TensorSpec
from serving.runtime.base import Runtime
from serving.runtime.content_types import CONTENT_TYPES, TENSOR_CODECS, decode_tensor


def prepare_inputs(request: InferenceRequest, runtime: Runtime) -> dict[str, np.ndarray]:
    """Match request inputs to declared inputs, convert datatypes safely and check shapes."""
    tensors, specs = request.inputs, runtime.inputs
    if not tensors:
        raise InvalidInput("request has no inputs")
    # A single-input model takes its one tensor whatever the client called it, as KServe and
    # MLServer do: clients routinely send "input-0" or "predict".
    pairs = [(tensors[0], specs[0])] if len(tensors) == 1 and len(specs) == 1 \
        else _pair_inputs(tensors, specs)
    arrays: dict[str, np.ndarray] = {}
    batch: int | None = None
    declared_types, default_type = _declared_content_types(runtime)
    request_type = request.parameters.get("content_type") if request.parameters else None
    if request_type is not None and request_type not in CONTENT_TYPES:
        raise InvalidInput(f"unknown request content_type {request_type!r}; expected one of "
                           f"{', '.join(CONTENT_TYPES)}")
    for tensor, spec in pairs:
        array = _convert(tensor, spec)
        _check_shape(tensor.name, array, spec)
        if (tensor.parameters and "content_type" in tensor.parameters) or declared_types \
                or default_type or request_type:
            array = decode_tensor(tensor.name, array, _content_type(
                tensor, spec, array, declared_types, request_type or default_type))
        if not runtime.accepts_non_finite and array.dtype.kind == "f" and not _all_finite(array):
            raise InvalidInput(f"input '{tensor.name}' contains NaN or Inf, which model "
                               f"'{request.model_name}' cannot take")
        rows = array.shape[0] if array.ndim else 1
        if rows == 0 or array.size == 0:
            raise InvalidInput(f"input '{tensor.name}' is an empty batch")
        if batch is not None and rows != batch:
            raise InvalidInput(f"inputs disagree on batch size: '{tensor.name}' has {rows} rows, "
                               f"others have {batch}")
        batch = rows
        arrays[spec.name] = array
    return arrays


# The sum in _all_finite overflows or meets inf - inf only on inputs it then checks one by one.
warnings.filterwarnings("ignore", r"(overflow|invalid value) encountered in reduce",
                        RuntimeWarning, __name__)


def _all_finite(array: np.ndarray) -> bool:
    """Whether no element is NaN or infinite. A NaN or an infinity makes the sum NaN or
    infinite, so a finite sum settles it in one reduction (0.8 µs for a one-row input, against
    1.2 µs for ``isfinite().all()``); only a sum that overflowed needs the element check."""
    return math.isfinite(np.add.reduce(array, axis=None)) or bool(np.isfinite(array).all())


def select_outputs(request: InferenceRequest, runtime: Runtime) -> list[str]:
    """The output names to compute: those requested, or the runtime's defaults (the runtime's
    own list, not a copy: callers only read it)."""
    if not request.outputs:
        return runtime.default_outputs
    known = {spec.name for spec in runtime.outputs}
    names = []
    for requested in request.outputs:
        if requested.name not in known:
            raise InvalidInput(f"unknown output '{requested.name}' requested; model "
                               f"'{request.model_name}' has outputs: {', '.join(sorted(known))}")
        names.append(requested.name)
    return names


def _declared_content_types(runtime: Runtime) -> tuple[dict[str, str], str | None]:
    """Per-input content types and the model default from its settings, computed once; a
    runtime that learns them elsewhere (runtimes.python) sets ``declared_content_types``."""
    cached: Any = getattr(runtime, "declared_content_types", None)
    if cached is None:
        settings = runtime.settings
        cached = ({s.name: s.content_type for s in settings.inputs if s.content_type},
                  settings.parameters.get("content_type"))
        runtime.declared_content_types = cached  # type: ignore[attr-defined]
    return cached  # type: ignore[no-any-return]


def _content_type(tensor: Tensor, spec: TensorSpec, array: np.ndarray,
                  declared: dict[str, str], fallback: str | None) -> str | None:
    """The input's own ``content_type``, else the declared one, else the request's or the
    model's default where it is a per-tensor codec and the tensor is BYTES."""
    own = tensor.parameters.get("content_type") if tensor.parameters else None
    if own is not None:
        return str(own)
    if spec.name in declared:
        return declared[spec.name]
    if fallback in TENSOR_CODECS and array.dtype == object:
        return fallback
    return None


def _pair_inputs(tensors: list[Tensor],
                 specs: list[TensorSpec]) -> list[tuple[Tensor, TensorSpec]]:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise InvalidInput(f"duplicate input names in request: {names}")
    declared = {spec.name: spec for spec in specs}
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; model inputs are: "
                           f"{', '.join(declared)}")
    missing = [n for n in declared if n not in names]
    if missing:
        raise InvalidInput(f"missing input(s) {missing}")
    return [(t, declared[t.name]) for t in tensors]


def _convert(tensor: Tensor, spec: TensorSpec) -> np.ndarray:
    array = tensor.data
    if tensor.datatype == spec.datatype:
        return array
    if not can_convert(tensor.datatype, spec.datatype):
        raise InvalidInput(f"input '{tensor.name}' has datatype {tensor.datatype}, which cannot be "
                           f"converted to the model's {spec.datatype}")
    target = DATATYPE_TO_DTYPE[spec.datatype]
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input '{tensor.name}' holds values outside the range of "
                               f"{spec.datatype}")
    return array.astype(target, copy=False)


def _check_shape(name: str, array: np.ndarray, spec: TensorSpec) -> None:
    expected = spec.shape
    if not expected:
        return
    shape = array.shape
    if len(shape) == len(expected) and expected[0] == -1 and shape[1:] == expected[1:]:
        return  # the usual case, a batch of fixed-size rows: one tuple comparison
    if len(shape) == len(expected):
        for want, got in zip(expected, shape, strict=True):  # a loop, not any(genexpr): once per input
            if want != got and want != -1:
                break
        else:
            return
    if len(expected) == 2 and len(shape) == 2 and expected[1] != -1:
        raise InvalidInput(f"input '{name}' has {shape[1]} features but the model expects "
                           f"{expected[1]} (shape {list(expected)}, got {list(shape)})")
    raise InvalidInput(f"input '{name}' has shape {list(shape)} but the model expects "
                       f"{list(expected)} (-1 is any size)")
