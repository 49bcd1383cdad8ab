"""KServe manifests into Turnout's own API group, losslessly (``turnout convert``).

A ``serving.kserve.io`` InferenceService (v1beta1) or InferenceGraph (v1alpha1) becomes the same
document in ``serving.turnout.dev/v1alpha1``:

- every field stays where it was, in its order, unknown ones too (a field the CRD's schema does
  not declare is kept but reported: an API server prunes it);
- the ``serving.turnout.dev/spec`` annotation's YAML moves into ``spec.turnout`` (the annotation
  goes; the annotations map too when nothing else is left in it);
- what a cluster sets — ``metadata.uid``, ``resourceVersion``, ``managedFields``,
  ``creationTimestamp``, ``generation``, ``selfLink`` — and ``status`` are dropped, so a
  ``kubectl get -o yaml`` copy applies as a new object;
- a fractional number of seconds in a duration field (``maxP99Seconds: 0.5``) becomes the
  string ``"0.5"`` (the CRD's int-or-string cannot hold a fraction; the models read both alike),
  a whole one written as a float (``30.0``) the integer ``30``.

Turnout documents pass through unchanged; empty documents are left out; the order is kept.
Every document is first checked with the same models as ``turnout up``: an invalid one is a
:class:`ConvertError` naming the document and each field, and nothing is converted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from serving.spec.base import TURNOUT_API_VERSION, unknown_fields
from serving.spec.crd import INT_OR_STRING, spec_schema
from serving.spec.load import ANNOTATION, ManifestError, documents, parse_document

CLUSTER_SET = ("uid", "resourceVersion", "managedFields", "creationTimestamp", "generation",
               "selfLink")


class ConvertError(ManifestError):
    """Documents that cannot be converted; the message names each document and field."""


@dataclass
class Converted:
    documents: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The documents as one YAML stream, in order, keys in their order."""
        return yaml.safe_dump_all(self.documents, sort_keys=False, allow_unicode=True,
                                  width=100)


def convert_texts(texts: list[tuple[str | Path, str]]) -> Converted:
    """Convert every document of every text; one :class:`ConvertError` lists all problems."""
    out = Converted()
    errors: list[str] = []
    for _, where, doc in documents(texts, errors):
        try:
            converted, warnings = convert_document(doc, where)
        except ManifestError as exc:
            errors.append(str(exc))
            continue
        out.documents.append(converted)
        out.warnings += warnings
    if errors:
        raise ConvertError("invalid manifests:\n  " + "\n  ".join(errors))
    return out


def convert_document(doc: Any, where: str) -> tuple[dict[str, Any], list[str]]:
    """One parsed document in Turnout's group, and warnings about it."""
    model = parse_document(doc, where)  # a ManifestError naming where and each field
    label = f"{where} ({doc['kind']} {model.name})"
    pruned = [f"{label}: {p} is not in the {doc['kind']} CRD's schema: kept, but an API server "
              "prunes it" for p in unknown_fields(model) if not p.startswith("metadata.")]
    if doc["apiVersion"] == TURNOUT_API_VERSION:
        return doc, pruned
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "apiVersion":
            out[key] = TURNOUT_API_VERSION
        elif key == "metadata":
            out[key] = _metadata(value, moved=doc["kind"] == "InferenceService")
        elif key != "status":
            out[key] = copy.deepcopy(value)
    text = (doc["metadata"].get("annotations") or {}).get(ANNOTATION)
    if text is not None and doc["kind"] == "InferenceService":
        out["spec"] = {**out["spec"], "turnout": yaml.safe_load(text) or {}}  # parsed above
    notes: list[str] = []
    _durations(out["spec"], spec_schema(doc["kind"])["properties"]["spec"], "spec", notes)
    warnings = [f"{label}: {note}" for note in notes]
    parse_document(out, where)  # the conversion itself must load
    return out, warnings + pruned


def _metadata(meta: dict[str, Any], *, moved: bool) -> dict[str, Any]:
    """Metadata without what a cluster set, and without the annotation when it ``moved``."""
    out = {k: copy.deepcopy(v) for k, v in meta.items() if k not in CLUSTER_SET}
    annotations = out.get("annotations")
    if moved and isinstance(annotations, dict) and ANNOTATION in annotations:
        del annotations[ANNOTATION]
        if not annotations:
            del out["annotations"]
    return out


def _durations(value: Any, schema: dict[str, Any], path: str, notes: list[str]) -> None:
    """Floats in int-or-string (duration) fields → an integer or a decimal string, in place."""
    if isinstance(value, dict):
        properties = schema.get("properties")
        for key, item in value.items():
            node = properties.get(key) if properties is not None else \
                schema.get("additionalProperties")
            if not isinstance(node, dict):
                continue
            where = f"{path}.{key}"
            if node.get(INT_OR_STRING) and isinstance(item, float):
                new: int | str = int(item) if item.is_integer() else \
                    format(Decimal(repr(item)), "f")
                value[key] = new
                if isinstance(new, str):
                    notes.append(f"{where}: {item!r} written as the string {new!r} (the CRD "
                                 "takes whole seconds or a duration string)")
            else:
                _durations(item, node, where, notes)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _durations(item, schema["items"], f"{path}[{index}]", notes)
