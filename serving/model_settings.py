"""Typed ``model-settings.yaml``: what a model is, where its artifact lives, which runtime runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .protocol.datatypes import DATATYPES
from .protocol.errors import ModelLoadError
from .protocol.types import TensorSpec

SETTINGS_FILE = "model-settings.yaml"


class TensorSpecSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    datatype: str
    shape: list[int] = Field(default_factory=lambda: [-1])

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}")
        return value

    def to_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


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
