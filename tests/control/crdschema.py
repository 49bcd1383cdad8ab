"""What a Kubernetes API server does with a CRD's schema, for tests without one.

- :func:`structural_problems`: the apiextensions.k8s.io/v1 rules a schema must meet to be
  accepted (a structural schema), as a list of problems;
- :func:`prune`: what the server drops before validating: fields the schema does not declare
  (except under ``x-kubernetes-preserve-unknown-fields``) and ``null`` where a field is not
  ``nullable`` (1.20+);
- :func:`errors`: validation of the pruned object, OpenAPI 3.0 read as JSON Schema draft 4
  (boolean ``exclusiveMinimum``), ``nullable`` and ``x-kubernetes-int-or-string`` as the server
  reads them; each error as (path, JSON-schema keyword).

Checked by hand against a real kube-apiserver v1.20.2 (the same verdicts on the same objects).
"""

from __future__ import annotations

import copy
from typing import Any

from jsonschema import Draft4Validator

TYPES = {"object", "array", "string", "integer", "number", "boolean"}
# apiextensions.k8s.io/v1 JSONSchemaProps fields this project may emit.
ALLOWED = {"description", "type", "format", "enum", "pattern", "minLength", "maxLength",
           "minItems", "maxItems", "minProperties", "maxProperties", "minimum", "maximum",
           "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "required", "items",
           "properties", "additionalProperties", "oneOf", "anyOf", "allOf", "not", "nullable",
           "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
           "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
           "x-kubernetes-embedded-resource"}
# Allowed inside oneOf/anyOf/allOf/not: value validations only (no type, description, default,
# additionalProperties, nullable, x-kubernetes-*).
JUNCTOR_ALLOWED = {"required", "properties", "enum", "pattern", "minLength", "maxLength",
                   "minItems", "maxItems", "minProperties", "maxProperties", "minimum",
                   "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "oneOf",
                   "anyOf", "allOf", "not", "items"}
JUNCTORS = ("oneOf", "anyOf", "allOf", "not")
PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"


def structural_problems(root: dict[str, Any]) -> list[str]:
    """Every way ``root`` (an ``openAPIV3Schema``) is not a structural schema."""
    problems: list[str] = []
    if root.get("type") != "object":
        problems.append("(root): type must be object")
    meta = root.get("properties", {}).get("metadata")
    if meta is not None and meta != {"type": "object"}:
        problems.append(f"metadata: only type: object, got {meta}")
    for key in ("apiVersion", "kind"):
        if root.get("properties", {}).get(key, {}).get("type") != "string":
            problems.append(f"{key}: must be a string")
    _node(root, "(root)", problems)
    return problems


def _node(node: Any, path: str, problems: list[str]) -> None:
    if not isinstance(node, dict):
        problems.append(f"{path}: a schema must be a mapping")
        return
    for key in node:
        if key not in ALLOWED:
            problems.append(f"{path}: {key!r} is not allowed in a v1 CRD schema")
    kind = node.get("type")
    if kind is None and not (node.get(INT_OR_STRING) or node.get(PRESERVE)):
        problems.append(f"{path}: no type (only int-or-string or preserve-unknown may omit it)")
    if kind is not None and kind not in TYPES:
        problems.append(f"{path}: type {kind!r}")
    if node.get(INT_OR_STRING) and kind is not None:
        problems.append(f"{path}: int-or-string with a type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
        problems.append(f"{path}: additionalProperties must be a schema")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            problems.append(f"{path}: {key} must be a boolean (OpenAPI 3.0)")
    if "default" in node:
        problems.append(f"{path}: a default (none are generated)")
    if node.get("nullable") and "enum" in node:
        problems.append(f"{path}: nullable with an enum rejects null (enum is checked first)")
    if kind == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{path}: an array needs one items schema")
    if kind != "object" and ("properties" in node or "additionalProperties" in node):
        problems.append(f"{path}: properties on a non-object")
    for name, child in (node.get("properties") or {}).items():
        _node(child, f"{path}.{name}", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _node(node["additionalProperties"], f"{path}.*", problems)
    if isinstance(node.get("items"), dict):
        _node(node["items"], f"{path}[]", problems)
    for junctor in JUNCTORS:
        if junctor in node:
            branches = node[junctor] if junctor != "not" else [node[junctor]]
            for i, branch in enumerate(branches):
                _junctor(branch, node, f"{path}.{junctor}[{i}]", problems)


def _junctor(branch: Any, outer: dict[str, Any], path: str, problems: list[str]) -> None:
    if not isinstance(branch, dict):
        problems.append(f"{path}: must be a mapping")
        return
    for key in branch:
        if key not in JUNCTOR_ALLOWED:
            problems.append(f"{path}: {key!r} is not allowed in a junctor")
    for name in branch.get("required", ()):
        if name not in (outer.get("properties") or {}):
            problems.append(f"{path}: requires {name!r}, which the node does not declare")
    for name, child in (branch.get("properties") or {}).items():
        declared = (outer.get("properties") or {}).get(name)
        if declared is None:
            problems.append(f"{path}.{name}: not declared outside the junctor")
        else:
            _junctor(child, declared, f"{path}.{name}", problems)


def prune(value: Any, schema: dict[str, Any], *, root: bool = True) -> Any:
    """``value`` as the API server stores it: undeclared fields and non-nullable nulls gone."""
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            if root and key == "metadata":
                out[key] = copy.deepcopy(item)  # the server's own ObjectMeta handling
                continue
            child = (properties or {}).get(key) if properties is not None else extra
            if child is None:
                if schema.get(PRESERVE):
                    out[key] = copy.deepcopy(item)
                continue
            if item is None and not child.get("nullable"):
                continue
            out[key] = prune(item, child, root=False)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], root=False) for item in value]
    return copy.deepcopy(value)


def draft4(node: Any) -> Any:
    """A CRD schema node as JSON Schema draft 4, with the server's reading of its extensions."""
    if isinstance(node, list):
        return [draft4(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: draft4(v) if k in ("items", "additionalProperties", "not") else v
           for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in node:
        out["properties"] = {k: draft4(v) for k, v in node["properties"].items()}
    for junctor in ("oneOf", "anyOf", "allOf"):
        if junctor in node:
            out[junctor] = draft4(node[junctor])
    if node.get(INT_OR_STRING):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
    return out


def errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, keyword) of each validation error of ``obj`` once pruned, sorted."""
    validator = Draft4Validator(draft4(schema))
    found = {(_path(e.absolute_path), str(e.validator))
             for e in validator.iter_errors(prune(obj, schema))}
    return sorted(found)


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
