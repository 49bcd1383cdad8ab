"""The internal request/response model shared by every edge (V1, V2 JSON/binary, gRPC).

Tensors hold numpy arrays so no edge or runtime ever builds Python lists on the hot path.
These types carry no protocol methods: the codecs beside them translate at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    inputs: list[Tensor]
    model_name: str = ""
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    # The request's headers (REST: the raw (bytes, bytes) pairs) or gRPC metadata, as the edge
    # has them; normalised and handed over only to a runtime that declares wants_headers.
    headers: Any = None


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class TensorSpec:
    """Declared metadata of one model input or output; -1 in ``shape`` means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: str = "READY"
    reason: str = ""


@dataclass(slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: list[str]


@dataclass(slots=True)
class RepositoryEntry:
    name: str
    version: str
    state: str
    reason: str = ""
