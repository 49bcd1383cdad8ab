"""Typed ``model-settings.yaml``: what a model is, where its artifact lives, which runtime runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.protocol.datatypes import DATATYPES
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.content_types import CONTENT_TYPES

SETTINGS_FILE = "model-settings.yaml"


class TensorSpecSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    datatype: str
    shape: list[int] = Field(default_factory=lambda: [-1])
    content_type: str | None = Field(None, description="np, pd, str or base64: how the tensor's "
                                     "data reaches the model (inputs) or is encoded (outputs)")

    @field_validator("content_type")
    @classmethod
    def _known_content_type(cls, value: str | None) -> str | None:
        if value is not None and value not in CONTENT_TYPES:
            raise ValueError(f"unknown content_type {value!r}; expected one of "
                             f"{', '.join(CONTENT_TYPES)}")
        return value

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}")
        return value

    def to_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


class BatchingSettings(BaseModel):
    """Adaptive batching for one model: requests are merged by rows, not by count."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, description="Most rows in one merged predict call")
    max_latency_ms: float = Field(2.0, ge=0, description="Longest a batch waits to fill, from "
                                  "its first request")
    max_queue_size: int = Field(1024, ge=1, description="Requests waiting beyond this are "
                                "refused with 429 instead of queueing without bound")
    queue_timeout_ms: float | None = Field(1000.0, gt=0, description="A request still queued "
                                           "after this long is refused with 429")


class ModelSettings(BaseModel):
    """Everything needed to load one version of one model.

    ``runtime`` is an entry-point name (``sklearn``, ``onnx``…) or an import path
    ``module:Class``; when absent it is detected from the artifact's file name.
    """

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    name: str
    version: str = "1"
    runtime: str | None = None
    artifact: Path
    inputs: list[TensorSpecSettings] = Field(default_factory=list)
    outputs: list[TensorSpecSettings] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    batching: BatchingSettings | None = None
    auto_batching: bool = Field(
        True, description="Whether batching may be turned on by measurement at load when "
        "``batching`` is not given; ``batching: none`` sets it false")
    execution: Literal["auto", "inline", "thread"] | None = Field(
        None, description="Where predict runs; default: what the runtime declares")
    model_class: str | None = Field(
        None, description="module:Class of a custom Python model (implies runtime: python)")
    max_queue: int | None = Field(
        None, ge=0, description="Requests that may wait for a predict thread (models predicting "
        "in threads, without batching); more are refused at once with 429 + Retry-After / "
        "RESOURCE_EXHAUSTED. Default: about one second of work at the latency measured at "
        "load, at least 8")
    storage_uri: str | None = Field(
        None, description="Where the artifact lives when not beside this file: a path, file://, "
        "http(s)://, s3://, gs://; fetched through fsspec into the local cache")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the fsspec filesystem "
        "(endpoint, credentials profile...)")

    @field_validator("parameters")
    @classmethod
    def _known_default_content_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        content_type = value.get("content_type")
        if content_type is not None and content_type not in CONTENT_TYPES:
            raise ValueError(f"unknown content_type {content_type!r}; expected one of "
                             f"{', '.join(CONTENT_TYPES)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _batching_none_opts_out(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("batching") == "none":
            return {**data, "batching": None, "auto_batching": False}
        return data

    @model_validator(mode="after")
    def _model_class_means_python(self) -> ModelSettings:
        if self.model_class and self.runtime is None:
            self.runtime = "python"
        return self

    def content_type(self) -> str | None:
        """The model's default content type for its inputs (``parameters.content_type``)."""
        return self.parameters.get("content_type")


def read_settings_file(path: Path) -> dict[str, Any]:
    """Parse a ``model-settings.yaml``; errors become load errors naming the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a mapping, not {type(data).__name__}")
    return data


def build_settings(**fields: Any) -> ModelSettings:
    try:
        return ModelSettings(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ModelLoadError(f"invalid model settings: {problems}") from exc
