"""Decoded request heads kept by their bytes, so a repeated head is not decoded again.

Why: clients send the same request head over and over — the same model, input names,
datatypes, shapes and parameters; only the tensor bytes change. Decoding that head (protobuf
field reads, JSON parsing, the checks on every field) cost ~3-4 µs of the event loop per
one-row request, an eighth of the loop's whole share for a batched model at c=64. A head that
decoded cleanly once is kept here by its exact bytes; the same bytes again give a fresh
:class:`InferenceRequest` from the template and the new tensor bytes, in about half the time.

What may be kept: only heads whose every input is a fixed-size numeric tensor sent as raw
bytes (BYTES tensors and JSON data are decoded each time). The codecs build the key so that
it holds every byte the template depends on, and decode the full request the ordinary way on
a miss, so a template only ever answers for bytes that were decoded and checked before. The
cache is bounded in entries and key length; full, it starts over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.protocol.datatypes import DATATYPE_TO_DTYPE
from serving.protocol.types import InferenceRequest, Parameters, RequestedOutput, Tensor

MAX_ENTRIES = 256  # distinct heads kept per codec (a server usually sees a handful)
MAX_KEY_BYTES = 2048  # longer heads are decoded each time: bounded memory


@dataclass(frozen=True, slots=True)
class InputTemplate:
    """One raw input: what its tensor is called and how its bytes become an array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int
    parameters: Parameters


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """A decoded request without its tensor bytes (and, for gRPC, without its id)."""

    inputs: tuple[InputTemplate, ...]
    model_name: str
    model_version: str | None
    id: str | None
    parameters: Parameters
    outputs: tuple[RequestedOutput, ...] | None

    @classmethod
    def of(cls, request: InferenceRequest) -> RequestTemplate | None:
        """The template of a request that decoded cleanly, or None where an input is not a
        fixed-size numeric tensor."""
        inputs = []
        for tensor in request.inputs:
            array = tensor.data
            dtype = DATATYPE_TO_DTYPE.get(tensor.datatype)
            if tensor.datatype == "BYTES" or dtype is None or type(array) is not np.ndarray \
                    or array.dtype.kind not in "biuf":
                return None
            inputs.append(InputTemplate(tensor.name, tensor.datatype, array.shape, array.dtype,
                                        array.nbytes, dict(tensor.parameters)))
        outputs = tuple(RequestedOutput(o.name, dict(o.parameters))
                        for o in request.outputs) if request.outputs else None
        return cls(tuple(inputs), request.model_name, request.model_version, request.id,
                   dict(request.parameters), outputs)

    def build(self, raws: Sequence[memoryview | bytes], request_id: str | None,
              model_name: str, model_version: str | None) -> InferenceRequest | None:
        """A fresh request with these tensor bytes (one per input, in order), or None where
        their count or a size differs from the template's (the caller decodes it fully)."""
        specs = self.inputs
        if len(raws) != len(specs):
            return None
        tensors = []
        for index, spec in enumerate(specs):
            raw = raws[index]
            if len(raw) != spec.nbytes:
                return None
            tensors.append(Tensor(spec.name, spec.datatype, np.ndarray(spec.shape, spec.dtype, raw),
                                  dict(spec.parameters) if spec.parameters else {}))
        outputs = self.outputs
        # positional: this runs once per request
        return InferenceRequest(
            tensors, model_name, model_version, request_id,
            dict(self.parameters) if self.parameters else {},
            [RequestedOutput(o.name, dict(o.parameters)) for o in outputs] if outputs else None)


class TemplateCache:
    """Templates by key bytes, bounded in entries and key length (one per codec and process;
    the event loop's thread and gRPC handler threads may share it: dict operations are atomic
    and a lost insert only costs a decode)."""

    __slots__ = ("_entries", "max_entries", "max_key_bytes")

    def __init__(self, max_entries: int = MAX_ENTRIES,
                 max_key_bytes: int = MAX_KEY_BYTES) -> None:
        self._entries: dict[bytes, RequestTemplate] = {}
        self.max_entries, self.max_key_bytes = max_entries, max_key_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> RequestTemplate | None:
        return self._entries.get(key)

    def remember(self, key: bytes, request: InferenceRequest) -> None:
        """Keep the template of ``request``, decoded from bytes that ``key`` holds."""
        if len(key) > self.max_key_bytes:
            return
        template = RequestTemplate.of(request)
        if template is None:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = template
