"""Checks on a whole set of manifests before anything is stored: the plan and the router must
accept every document, or nothing changes.

Each problem reads ``where: what`` (``InferenceService iris: spec.predictor.model.modelFormat:
...``), every problem of every document is reported at once, and the checks are the ones the
plan and the router will apply themselves — a graph is validated by the router's own config
model — so a set that passes here cannot break a later reconcile. Pure; the checks that need
the filesystem or the network (does a local path exist, what artifact is there) are the
actuator's (``serving.control.local.checks``).
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.control.policy.autoscale import knative_ignored, knative_settings
from serving.control.policy.formats import FormatError, runtime_for
from serving.control.policy.routes import TAG_ROUTING, _graph, _services_of
from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService
from serving.spec.routes import ConfigError, parse_config

_PLACEHOLDER = {"name": "stable", "weight": 100, "http": ["http://127.0.0.1:1"]}


def problems(services: Mapping[str, InferenceService],
             graphs: Mapping[str, InferenceGraph]) -> list[str]:
    """Everything wrong with running ``services`` and ``graphs`` together (the result of an
    apply: what was running, updated by what is applied)."""
    found: list[str] = []
    for name, isvc in services.items():
        found += [f"InferenceService {name}: {p}" for p in service_problems(isvc)]
    for name, graph in graphs.items():
        found += [f"InferenceGraph {name}: {p}" for p in graph_problems(graph, services)]
    return found


def service_problems(isvc: InferenceService) -> list[str]:
    found = []
    model = isvc.spec.predictor.resolved()
    where = "spec.predictor.model" if isvc.spec.predictor.model is not None else "spec.predictor"
    try:
        runtime_for(model.modelFormat.name, model.runtime)
    except FormatError as exc:
        found.append(f"{where}: {exc}")
    try:
        knative_settings(isvc)
    except ValueError as exc:
        found.append(f"metadata.annotations: {exc}")
    return found


def graph_problems(graph: InferenceGraph, services: Mapping[str, InferenceService]) -> list[str]:
    """The router's own checks on one graph, against the services that will exist."""
    missing = sorted(_services_of(graph) - set(services))
    if missing:
        return [f"spec.nodes: steps name InferenceServices that are not applied: {missing}"]
    doc = {"services": [{"name": name, "variants": [_PLACEHOLDER]} for name in services],
           "graphs": [_graph(graph)]}
    try:
        parse_config(doc, source=f"InferenceGraph {graph.name}")
    except ConfigError as exc:
        lines = str(exc).splitlines()[1:] or [str(exc)]
        return [line.strip().replace("graphs.0.", "spec.", 1) for line in lines]
    return []


KSERVE_ANNOTATIONS = "serving.kserve.io/"


def warnings(services: list[InferenceService]) -> list[str]:
    """Annotations accepted but not acted on here, each named (never silently ignored)."""
    found = []
    for isvc in services:
        label = f"InferenceService {isvc.name}: metadata.annotations"
        found += [f"{label}.{key}: not acted on locally" for key in knative_ignored(isvc)]
        found += [f"{label}.{key}: not acted on locally" for key in isvc.metadata.annotations
                  if key.startswith(KSERVE_ANNOTATIONS) and key != TAG_ROUTING]
    return found
