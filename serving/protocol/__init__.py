"""Protocol-neutral types, datatypes and errors used by every Turnout component."""

from serving.protocol.errors import (
    ErrorKind,
    InvalidInput,
    ModelFailed,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    TurnoutError,
)
from serving.protocol.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RepositoryEntry,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    TensorSpec,
)

__all__ = [
    "ErrorKind", "InvalidInput", "ModelFailed", "ModelLoadError", "ModelNotFound",
    "ModelNotReady", "Overloaded", "PayloadTooLarge", "TurnoutError", "InferenceRequest",
    "InferenceResponse", "ModelMetadata", "Parameters", "RepositoryEntry", "RequestedOutput",
    "ServerMetadata", "Tensor", "TensorSpec",
]
