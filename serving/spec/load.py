"""Reading manifest files: several YAML documents per file, each checked and reported by path.

Every problem in every document is collected before anything is returned, so a caller never
acts on part of a set of manifests (``turnout up`` starts nothing when one document is bad).
Documents keep their order: an InferenceService named twice is applied twice, in order, as
``kubectl apply`` would (the first creates a revision, the second updates it).

Both API groups load into the same models: KServe's (``serving.kserve.io``) and Turnout's own
(``serving.turnout.dev/v1alpha1``, the custom resources of :mod:`serving.spec.crd`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serving.spec.base import TURNOUT_API_VERSION, unknown_fields
from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService

ANNOTATION = "serving.turnout.dev/spec"
_KINDS: dict[tuple[str, str], type[InferenceService] | type[InferenceGraph]] = {
    ("serving.kserve.io/v1beta1", "InferenceService"): InferenceService,
    ("serving.kserve.io/v1alpha1", "InferenceGraph"): InferenceGraph,
    (TURNOUT_API_VERSION, "InferenceService"): InferenceService,
    (TURNOUT_API_VERSION, "InferenceGraph"): InferenceGraph,
}


class ManifestError(ValueError):
    """Manifests that cannot be used; the message lists each problem as ``where: field: what``."""


@dataclass
class Manifests:
    services: list[InferenceService] = field(default_factory=list)
    graphs: list[InferenceGraph] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)  # service name -> its file


def last_documents(manifests: Manifests) -> Manifests:
    """Only the last document of each InferenceService: where a restored plane already holds
    the history, re-applying earlier documents of the same file would replay it."""
    last = {isvc.name: isvc for isvc in manifests.services}
    return Manifests(services=list(last.values()), graphs=manifests.graphs,
                     warnings=manifests.warnings, sources=manifests.sources)


def load_files(paths: list[Path]) -> Manifests:
    texts = []
    for path in paths:
        try:
            texts.append((path, path.read_text()))
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    return load_texts(texts)


def documents(texts: Iterable[tuple[Path | str, str]], errors: list[str]
              ) -> Iterator[tuple[Path | str, str, Any]]:
    """``(path, where, document)`` for every non-empty YAML document of every text, in order;
    a text that is not YAML adds its problem to ``errors`` instead."""
    for path, text in texts:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            errors.append(f"{path}: not valid YAML: {exc}")
            continue
        for index, doc in enumerate(docs):
            if doc is not None:
                yield path, f"{path}[{index}]", doc


def load_texts(texts: list[tuple[Path, str]]) -> Manifests:
    """Parse every document of every text; raise one :class:`ManifestError` listing all errors."""
    out = Manifests()
    errors: list[str] = []
    for path, where, doc in documents(texts, errors):
        try:
            _add(out, parse_document(doc, where), where, Path(path))
        except ManifestError as exc:
            errors.append(str(exc))
    graphs = [g.name for g in out.graphs]
    repeated = sorted({n for n in graphs if graphs.count(n) > 1})
    if repeated:
        errors.append(f"InferenceGraph names repeat: {repeated}")
    if errors:
        raise ManifestError("invalid manifests:\n  " + "\n  ".join(errors))
    return out


def parse_document(doc: Any, where: str) -> InferenceService | InferenceGraph:
    """One parsed YAML document as its model; :class:`ManifestError` naming ``where`` and each
    field otherwise."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: a manifest must be a mapping")
    kind = _KINDS.get((doc.get("apiVersion"), doc.get("kind")))  # type: ignore[arg-type]
    if kind is None:
        raise ManifestError(f"{where}: apiVersion/kind {doc.get('apiVersion')}/{doc.get('kind')} "
                            "is not supported (serving.kserve.io/v1beta1 InferenceService, "
                            f"serving.kserve.io/v1alpha1 InferenceGraph, {TURNOUT_API_VERSION} "
                            "InferenceService and InferenceGraph)")
    doc = _with_annotation_block(doc, where)
    name = (doc.get("metadata") or {}).get("name", "?")
    try:
        return kind.model_validate(doc)
    except ValidationError as exc:
        lines = [f"{where} ({doc['kind']} {name}): {_loc(err['loc'])}: {err['msg']}"
                 for err in exc.errors()]
        raise ManifestError("\n  ".join(lines)) from None


def _with_annotation_block(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """Move the ``serving.turnout.dev/spec`` annotation's YAML into ``spec.turnout``."""
    text = ((doc.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if text is None or doc.get("kind") != "InferenceService":
        return doc
    spec = dict(doc.get("spec") or {})
    if "turnout" in spec:
        raise ManifestError(f"{where}: give Turnout's block either as spec.turnout or as the "
                            f"{ANNOTATION} annotation, not both")
    try:
        spec["turnout"] = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(f"{where}: metadata.annotations.{ANNOTATION}: not YAML: {exc}") from None
    return {**doc, "spec": spec}


def _add(out: Manifests, item: InferenceService | InferenceGraph, where: str, path: Path) -> None:
    label = f"{where} ({item.kind} {item.name})"
    out.warnings += [f"{label}: unknown field {p} is ignored" for p in unknown_fields(item)]
    if isinstance(item, InferenceService):
        out.warnings += [f"{label}: {note}" for note in item.ignored_locally()]
        out.services.append(item)
        out.sources[item.name] = path
    else:
        out.graphs.append(item)


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif parts:
            parts.append(f".{part}")
        else:
            parts.append(str(part))
    return "".join(parts) or "(top level)"
