"""Turnout's CustomResourceDefinitions, generated from the models ``turnout up`` validates.

``InferenceService`` and ``InferenceGraph`` in Turnout's own API group, ``serving.turnout.dev``,
version ``v1alpha1`` (``apiextensions.k8s.io/v1``; Kubernetes 1.20 or later, so no CEL). The
``openAPIV3Schema`` of each is the pydantic JSON schema of :class:`InferenceService` /
:class:`InferenceGraph` made *structural*, as Kubernetes requires:

- ``$ref``/``$defs`` inlined; ``anyOf [X, null]`` becomes X with ``nullable: true``;
- durations (a number of seconds, or ``30s``, ``500ms``, ``2m``, ``1h``) become
  ``x-kubernetes-int-or-string: true`` with the duration pattern for the string form: a
  structural schema has no number-or-string, so a fractional number of seconds is written as a
  string (``0.5`` → ``"0.5"``; ``turnout convert`` does it);
- enums, ``minimum``/``maximum`` (exclusive ones in OpenAPI 3.0's boolean form), lengths,
  patterns and ``required`` are kept; titles and defaults are dropped (the models apply the
  defaults, so a stored object stays as written);
- the exactly-one rules of the models' validators travel in their ``json_schema_extra`` as
  ``oneOf`` of ``required`` (predictor: ``model`` or one framework key; step: ``nodeName`` or
  ``serviceName``; sticky: ``header`` or ``cookie``) or ``anyOf`` (a rule matches a header or a
  cookie). Fields named in such a choice, fields holding one, required fields and enum fields
  are not ``nullable``: the API server prunes a ``null`` there before validating (1.20+), which
  means what ``null`` means to the models, absent — where a kept ``null`` would count as a
  choice, pass a ``required`` or fail an enum;
- every field the models leave untyped (``Any``: Kubernetes pod and container fields such as
  ``resources``, ``env``, ``affinity``, ``tolerations``, ``volumes``, ``containers``, probes,
  ``securityContext``; KServe's ``transformer``, ``explainer``, ``storage``,
  ``deploymentStrategy``, ``workerSpec``) is an object with
  ``x-kubernetes-preserve-unknown-fields: true``. Everywhere else a field the models do not
  declare is pruned by the API server, as Kubernetes does for any structural schema (``turnout
  convert`` warns about each such field);
- ``metadata`` is ``type: object`` only: Kubernetes validates it itself.

What a schema cannot say stays in the models' validators, which the controller runs on every
resource and reports as the ``Ready`` condition with status ``False``, reason ``InvalidSpec`` and
the models' message (``where: field: what``): ``minReplicas`` ≤ ``maxReplicas``, strictly
rising rollout steps, the graph's references and conditions, a metadata name that is a DNS-1035
label (Kubernetes accepts any DNS subdomain), ``serviceUrl`` steps, durations greater than zero
when written as strings.

Status (the ``status`` subresource; the controller writes it, users never do). Its schema keeps
unknown fields; the names below are the ones the printer columns read:

=========================  ================================================================
``url``                    string: where clients reach the service or graph (the router)
``conditions``             list of ``{type, status, reason, message, lastTransitionTime}``,
                           ``status`` one of ``"True"``, ``"False"``, ``"Unknown"``; ``Ready``
                           is the one the printer column shows
``observedGeneration``     integer: the ``metadata.generation`` the status describes
``canaryTrafficPercent``   integer 0..100: the canary's current share of traffic
                           (InferenceService; null or absent without a canary)
``rolloutStep``            integer 0..100: the progressive rollout's current step, the share
                           within ``spec.turnout.rollout.steps`` it is at (InferenceService;
                           null or absent without a progressive rollout)
``turnout``                object: the serialized revision state (the service's
                           ``ServiceState``, as ``.turnout/state.json`` keeps it)
=========================  ================================================================

The typed fields above are ``nullable``; anything else the controller writes (KServe's
``address``, ``components``...) is kept.

Printer columns (``kubectl get``): URL, Ready, Canary %, Rollout Step, Age for services; URL,
Ready, Age for graphs.

Pure: :func:`crds` returns the documents, :func:`render` their YAML; ``scripts/gen_crds.py``
writes them to ``charts/turnout/crds/`` and ``turnout crds`` prints them.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from pydantic import BaseModel

from serving.spec.base import TURNOUT_GROUP, TURNOUT_VERSION
from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService

GENERATOR = "python scripts/gen_crds.py"

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"

# Status field names, for the controller (see the module's docstring).
STATUS_URL = "url"
STATUS_CONDITIONS = "conditions"
STATUS_OBSERVED_GENERATION = "observedGeneration"
STATUS_CANARY_PERCENT = "canaryTrafficPercent"
STATUS_ROLLOUT_STEP = "rolloutStep"
STATUS_TURNOUT = "turnout"
READY = "Ready"
INVALID_SPEC = "InvalidSpec"

# Keys of the pydantic schema carried over unchanged (values, not structure).
_VALUE_KEYS = ("enum", "pattern", "minLength", "maxLength", "minItems", "maxItems",
               "minProperties", "maxProperties", "minimum", "maximum", "multipleOf")
_DROPPED = ("title", "default", "examples")
_JUNCTOR_KEYS = ("required", "properties")
_JUNCTOR_VALUE_KEYS = ("minProperties", "maxProperties", "minItems", "maxItems", "minLength",
                       "maxLength", "minimum", "maximum", "pattern", "enum")


class SchemaError(ValueError):
    """The models produced a JSON schema this generator cannot make structural."""


def crds() -> list[dict[str, Any]]:
    """Both CustomResourceDefinitions, InferenceService first."""
    return [
        _crd(InferenceService, plural="inferenceservices", short="tisvc",
             status=_status(service=True), columns=[
                 _column("URL", "string", f".status.{STATUS_URL}"),
                 _column("Ready", "string",
                         f'.status.{STATUS_CONDITIONS}[?(@.type=="{READY}")].status'),
                 _column("Canary %", "integer", f".status.{STATUS_CANARY_PERCENT}"),
                 _column("Rollout Step", "integer", f".status.{STATUS_ROLLOUT_STEP}"),
                 _column("Age", "date", ".metadata.creationTimestamp")]),
        _crd(InferenceGraph, plural="inferencegraphs", short="tig",
             status=_status(service=False), columns=[
                 _column("URL", "string", f".status.{STATUS_URL}"),
                 _column("Ready", "string",
                         f'.status.{STATUS_CONDITIONS}[?(@.type=="{READY}")].status'),
                 _column("Age", "date", ".metadata.creationTimestamp")]),
    ]


def file_name(crd: dict[str, Any]) -> str:
    """``inferenceservices.serving.turnout.dev.yaml``: the CRD's own name."""
    return f"{crd['metadata']['name']}.yaml"


class _Dumper(yaml.SafeDumper):
    """Writes repeated values out in full: no ``&id001`` anchors in a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: dict[str, Any]) -> str:
    """One CRD as YAML, with a header naming its generator."""
    body = yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return (f"# Generated by `{GENERATOR}` from the models in serving/spec (the ones "
            f"`turnout up` validates). DO NOT EDIT.\n{body}")


def render_all() -> str:
    """Every CRD in one multi-document YAML stream (what ``kubectl apply -f -`` takes)."""
    return "---\n".join(render(crd) for crd in crds())


@functools.cache
def _generated() -> tuple[dict[str, Any], ...]:
    return tuple(crds())


def spec_schema(kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``kind`` (``InferenceService`` or ``InferenceGraph``); shared,
    do not change it."""
    for crd in _generated():
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise KeyError(kind)


# --- the document around the schema ---------------------------------------------------------

def _crd(model: type[BaseModel], *, plural: str, short: str, status: dict[str, Any],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    kind = model.__name__
    schema = model.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    spec = structural(schema["properties"]["spec"], defs, "spec")
    root = {
        "description": f"{kind} in Turnout's API group: KServe's {kind} fields"
                       + (" plus Turnout's spec.turnout block" if kind == "InferenceService"
                          else "") + " (serving.kserve.io manifests convert with "
                       "`turnout convert`).",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{TURNOUT_GROUP}",
                     "labels": {"app.kubernetes.io/part-of": "turnout"}},
        "spec": {
            "group": TURNOUT_GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": [short], "categories": ["turnout"]},
            "scope": "Namespaced",
            "versions": [{
                "name": TURNOUT_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def _column(name: str, kind: str, path: str) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path}


def _status(*, service: bool) -> dict[str, Any]:
    """The controller's fields, typed (``null`` allowed: a JSON patch may clear one); any other
    field it writes is kept."""
    def field(kind: str, description: str, **checks: Any) -> dict[str, Any]:
        return {"description": description, "type": kind, **checks, "nullable": True}

    properties: dict[str, Any] = {
        STATUS_URL: field("string", "where clients reach it, through the router"),
        STATUS_CONDITIONS: {"type": "array", "items": {
            "type": "object", "required": ["type", "status"], PRESERVE: True,
            "properties": {"type": {"type": "string"},
                           "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                           "reason": {"type": "string"}, "message": {"type": "string"},
                           "lastTransitionTime": {"type": "string"}}}},
        STATUS_OBSERVED_GENERATION: field("integer", "the metadata.generation described"),
    }
    if service:
        properties |= {
            STATUS_CANARY_PERCENT: field("integer", "the canary's share of traffic now",
                                         minimum=0, maximum=100),
            STATUS_ROLLOUT_STEP: field("integer", "the progressive rollout's current step (a "
                                       "share within spec.turnout.rollout.steps)",
                                       minimum=0, maximum=100),
            STATUS_TURNOUT: {"description": "the serialized revision state (ServiceState)",
                             "type": "object", PRESERVE: True},
        }
    return {"description": "Written by the Turnout controller.", "type": "object",
            PRESERVE: True, "properties": properties}


# --- pydantic JSON schema → structural schema ------------------------------------------------

def structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """One pydantic JSON-schema node as a structural ``openAPIV3Schema`` node."""
    node = _inline(node, defs)
    nullable = False
    if "anyOf" in node and not _is_junctor(node["anyOf"]):
        node, nullable = _collapse(node, defs, path)
    if "oneOf" in node and not _is_junctor(node["oneOf"]):
        raise SchemaError(f"{path}: oneOf of types is not structural")
    out: dict[str, Any] = {}
    if "description" in node:
        out["description"] = " ".join(node["description"].split())  # docstrings, one line
    if node.get(INT_OR_STRING):
        out[INT_OR_STRING] = True
    elif node == {} or (node.keys() <= {"description", *_DROPPED}):
        out |= {"type": "object", PRESERVE: True}  # Any: a Kubernetes object passed through
    else:
        kind = node.get("type")
        if kind not in ("object", "array", "string", "integer", "number", "boolean"):
            raise SchemaError(f"{path}: no structural type in {node}")
        out["type"] = kind
    if "const" in node:
        out["enum"] = [node["const"]]
    for key in _VALUE_KEYS:
        if key in node:
            out[key] = node[key]
    _bounds(node, out)
    kind = out.get("type")
    if kind == "object" and not out.get(PRESERVE):
        _object(node, out, defs, path)
    elif kind == "array":
        items = node.get("items", {})
        if not isinstance(items, dict):
            raise SchemaError(f"{path}: tuple items are not structural")
        out["items"] = structural(items, defs, f"{path}[]")
    for key in node:
        if key not in (*_VALUE_KEYS, *_DROPPED, "description", "type", "const", "properties", "required",
                       "additionalProperties", "items", "oneOf", "anyOf", "exclusiveMinimum",
                       "exclusiveMaximum", "gt", "ge", "lt", "le", INT_OR_STRING):
            raise SchemaError(f"{path}: JSON schema key {key!r} has no structural equivalent")
    if nullable and not out.keys() & {"enum", "oneOf", "anyOf"}:
        out["nullable"] = True
    return out


def _object(node: dict[str, Any], out: dict[str, Any], defs: dict[str, Any], path: str) -> None:
    properties = node.get("properties")
    extra = node.get("additionalProperties")
    if properties is not None:
        # Extras the models accept (extra="allow") are reported by turnout up and pruned here.
        chosen = {name for junctor in ("oneOf", "anyOf") for branch in node.get(junctor, ())
                  for name in branch.get("required", ())}
        out["properties"] = {}
        required = set(node.get("required", ()))
        for name, child in properties.items():
            converted = structural(child, defs, f"{path}.{name}")
            if name in chosen or name in required:
                converted.pop("nullable", None)
            out["properties"][name] = converted
        for junctor in ("oneOf", "anyOf"):
            if junctor in node:
                out[junctor] = [_junctor(branch, properties, f"{path}.{junctor}")
                                for branch in node[junctor]]
    elif isinstance(extra, dict) and extra:
        out["additionalProperties"] = structural(extra, defs, f"{path}.*")
    else:  # dict[str, Any] or a bare object: a Kubernetes map passed through
        out[PRESERVE] = True
    if node.get("required"):
        out["required"] = list(node["required"])


def _junctor(branch: dict[str, Any], properties: dict[str, Any], path: str) -> dict[str, Any]:
    """A oneOf/anyOf branch: only ``required`` and value checks of declared properties."""
    if not branch.keys() <= set(_JUNCTOR_KEYS):
        raise SchemaError(f"{path}: a junctor may hold only {_JUNCTOR_KEYS}, got {sorted(branch)}")
    out: dict[str, Any] = {}
    for name in branch.get("required", ()):
        if name not in properties:
            raise SchemaError(f"{path}: requires undeclared field {name!r}")
    if "required" in branch:
        out["required"] = list(branch["required"])
    if "properties" in branch:
        out["properties"] = {}
        for name, checks in branch["properties"].items():
            if name not in properties or not checks.keys() <= set(_JUNCTOR_VALUE_KEYS):
                raise SchemaError(f"{path}.{name}: only value checks of a declared field")
            out["properties"][name] = dict(checks)
    return out


def _is_junctor(branches: list[dict[str, Any]]) -> bool:
    """A oneOf/anyOf of ``required`` choices (from ``json_schema_extra``), not of types."""
    return all("type" not in b and "$ref" not in b and "anyOf" not in b and "required" in b
               for b in branches)


def _inline(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **rest}
    return node


def _collapse(node: dict[str, Any], defs: dict[str, Any],
              path: str) -> tuple[dict[str, Any], bool]:
    """``anyOf`` of types → one node: null drops out as ``nullable``; number-or-duration-string
    becomes int-or-string. Keys beside the ``anyOf`` (description, bounds) apply to the result."""
    options = _flatten(node["anyOf"], defs)
    nullable = any(o.get("type") == "null" for o in options)
    options = [o for o in options if o.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    kinds = sorted(o.get("type", "") for o in options)
    if len(options) == 1:
        merged = {**options[0], **{k: v for k, v in rest.items() if k not in _DROPPED}}
        if "anyOf" in merged and not _is_junctor(merged["anyOf"]):
            merged, inner = _collapse(merged, defs, path)
            nullable = nullable or inner
        return merged, nullable
    if kinds in (["number", "string"], ["integer", "string"]):
        (number,) = [o for o in options if o["type"] != "string"]
        (string,) = [o for o in options if o["type"] == "string"]
        merged = {k: v for k, v in number.items() if k != "type"}
        merged |= {k: v for k, v in string.items() if k != "type"}
        merged |= rest
        merged[INT_OR_STRING] = True
        return merged, nullable
    raise SchemaError(f"{path}: anyOf of {kinds} has no structural equivalent")


def _flatten(options: list[dict[str, Any]], defs: dict[str, Any]) -> list[dict[str, Any]]:
    flat: list[dict[str, Any]] = []
    for option in options:
        option = _inline(option, defs)
        if "anyOf" in option and option.keys() <= {"anyOf", *_DROPPED}:
            flat += _flatten(option["anyOf"], defs)
        else:
            flat.append(option)
    return flat


_BOUNDS: dict[str, tuple[str, bool]] = {
    "ge": ("minimum", False), "gt": ("minimum", True),
    "le": ("maximum", False), "lt": ("maximum", True),
}


def _bounds(node: dict[str, Any], out: dict[str, Any]) -> None:
    """Draft 2020-12's numeric ``exclusiveMinimum: 0`` (and the raw ``gt``/``ge`` pydantic leaves
    where it could not place a bound) → OpenAPI 3.0's ``minimum: 0, exclusiveMinimum: true``."""
    for key, (target, exclusive) in (*_BOUNDS.items(), ("exclusiveMinimum", ("minimum", True)),
                                     ("exclusiveMaximum", ("maximum", True))):
        if key in node:
            out[target] = node[key]
            if exclusive:
                out[f"exclusive{target[0].upper()}{target[1:]}"] = True
