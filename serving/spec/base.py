"""Shared pieces of the manifest models: permissive-but-reported extras, durations, errors.

KServe manifests carry many Kubernetes fields Turnout has no use for locally (resources,
affinity, serviceAccountName...). Models here accept unknown keys instead of refusing them, and
:func:`unknown_fields` walks a parsed manifest afterwards to report each one by its path, so a
manifest written for a cluster still loads while a typo such as ``minReplica`` is still seen.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
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


Seconds = Annotated[float, BeforeValidator(_seconds)]


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
