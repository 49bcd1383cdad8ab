"""Shared pieces of the manifest models: permissive-but-reported extras, durations, errors.

KServe manifests carry many Kubernetes fields Turnout has no use for locally (resources,
affinity, serviceAccountName...). Models here accept unknown keys instead of refusing them, and
:func:`unknown_fields` walks a parsed manifest afterwards to report each one by its path, so a
manifest written for a cluster still loads while a typo such as ``minReplica`` is still seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# The apiVersions of the two groups a manifest may use: KServe's, and Turnout's own (the
# custom resources of serving/spec/crd.py, where ``spec.turnout`` is a first-class field).
KSERVE_GROUP = "serving.kserve.io"
TURNOUT_GROUP = "serving.turnout.dev"
TURNOUT_VERSION = "v1alpha1"
TURNOUT_API_VERSION = f"{TURNOUT_GROUP}/{TURNOUT_VERSION}"

DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class SpecModel(BaseModel):
    """Base of every manifest model: camelCase as in KServe, extras kept so they can be reported."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True,
                              protected_namespaces=())


def parse_seconds(value: Any) -> float:
    """``30``, ``"30s"``, ``"500ms"``, ``"2m"`` → seconds; ``ValueError`` otherwise."""
    seconds = _seconds(value)
    if isinstance(seconds, str):
        raise ValueError(f"{value!r} is not a duration")
    return float(seconds)


def _seconds(value: Any) -> Any:
    """``30``, ``"30s"``, ``"500ms"``, ``"2m"`` → seconds; anything else is left to pydantic."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 30s, 500ms or 2m")
        return float(match.group(1)) * _UNIT[match.group(2)]
    return value


class _DurationSchema:
    """JSON schema of a duration: the number of seconds, or a string such as ``30s``."""

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [handler(core_schema), {"type": "string", "pattern": DURATION_PATTERN}]}


Seconds = Annotated[float, BeforeValidator(_seconds), _DurationSchema]


def exactly_one(*names: str) -> dict[str, Any]:
    """JSON schema (a model's ``json_schema_extra``) saying exactly one of ``names`` is given:
    the same rule the model's validator enforces, written where a CRD can carry it."""
    return {"oneOf": [{"required": [name]} for name in names]}


def requires(*names: str) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` adding ``names`` to the schema's required fields: fields that are
    optional on the model itself but that an enclosing model's validator requires."""
    def extra(schema: dict[str, Any]) -> None:
        schema["required"] = [*schema.get("required", []), *names]
    return extra


def unknown_fields(model: BaseModel, path: str = "") -> list[str]:
    """Dotted paths of every key the models did not declare, depth first."""
    found: list[str] = []
    for key in (model.model_extra or {}):
        found.append(f"{path}{key}")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = field.alias or name
        found += _walk(value, f"{path}{key}")
    return found


def _walk(value: Any, path: str) -> list[str]:
    if isinstance(value, BaseModel):
        return unknown_fields(value, path + ".")
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _walk(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for k, item in value.items() for p in _walk(item, f"{path}.{k}")]
    return []
