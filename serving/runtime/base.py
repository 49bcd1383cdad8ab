"""The runtime plugin interface: one small class per framework.

A runtime loads one artifact, declares its inputs and outputs, and predicts on numpy arrays
that the data plane has already validated against that declaration. Runtimes register under
the ``turnout.runtimes`` entry-point group, so a third party adds one with a pyproject line.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from serving.protocol.datatypes import datatype_of
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime import mlmodel
from serving.runtime.settings import ModelSettings

ENTRY_POINT_GROUP = "turnout.runtimes"
Execution = Literal["auto", "inline", "thread"]


class Runtime(ABC):
    """Base class of every framework adapter.

    ``execution`` says where predict may run: ``inline`` on the event loop (only for
    microsecond-cheap, non-blocking code), ``thread`` in the server's bounded pool, or
    ``auto``: the server times a one-row predict after loading and runs it inline when that
    is cheaper than a thread hop (see serving/execution.py). Model settings may override it.
    """

    name: ClassVar[str]
    platform: ClassVar[str]
    artifact_suffixes: ClassVar[tuple[str, ...]] = ()
    execution: Execution = "thread"
    # Whether predict wants the request's headers (transformers): the data plane asks per
    # request, so it is a class attribute, not a failed lookup each time.
    wants_headers: ClassVar[bool] = False

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.default_outputs: list[str] = []
        # Whether inputs may hold NaN or ±Inf; the data plane rejects them with a 400 if not.
        self.accepts_non_finite = True
        # True when predict already encodes outputs by content type (the custom-model runtime),
        # so the data plane must not encode them again.
        self.encodes_outputs = False
        # A one-row predict's time, when the server measured it at load (execution "auto"):
        # what the admission limit is sized from.
        self.one_row_seconds: float | None = None

    @abstractmethod
    def load(self) -> None:
        """Load ``settings.artifact`` and fill ``inputs``, ``outputs`` and ``default_outputs``."""

    @abstractmethod
    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Compute the named ``outputs`` from validated ``inputs`` keyed by declared input name.

        Every output's first dimension must equal the batch size of the inputs.
        """

    def unload(self) -> None:
        """Release resources; the default drops nothing because Python's GC does it."""

    def declared(self, inferred_inputs: list[TensorSpec],
                 inferred_outputs: list[TensorSpec]) -> None:
        """Use metadata from model settings where given, else what the artifact told us."""
        self.inputs = [s.to_spec() for s in self.settings.inputs] or inferred_inputs
        self.outputs = [s.to_spec() for s in self.settings.outputs] or inferred_outputs
        if not self.default_outputs:
            self.default_outputs = [spec.name for spec in self.outputs]


def describe_outputs(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> list[TensorSpec]:
    """Output metadata learned from one prediction (on a row of zeros), for frameworks whose
    artifacts do not record their output types; a model that cannot predict it fails to load."""
    try:
        probe = compute()
    except Exception as exc:
        raise ModelLoadError(f"{path}: prediction on a row of zeros fails, so the outputs "
                             f"cannot be described: {type(exc).__name__}: {exc}") from exc
    return [TensorSpec(name, datatype_of(array), (-1, *array.shape[1:]))
            for name, array in probe.items()]


def available_runtimes() -> dict[str, type[Runtime]]:
    """Every runtime registered through the entry-point group, by name."""
    found: dict[str, type[Runtime]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except ImportError:
            continue  # its framework extra is not installed; it simply is not offered
    return found


def resolve_runtime(name: str) -> type[Runtime]:
    """A runtime by entry-point name or ``module:Class`` import path."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"cannot import runtime {name!r}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Runtime)):
            raise ModelLoadError(f"{name!r} is not a turnout Runtime subclass")
        return cls
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return ep.load()  # type: ignore[no-any-return]
        except ImportError as exc:
            raise ModelLoadError(
                f"runtime {name!r} needs a framework that is not installed ({exc}); "
                f"install turnout[{name}]"
            ) from exc
    raise ModelLoadError(f"unknown runtime {name!r}; registered: "
                         f"{', '.join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)))}")


# Files that sit beside a model and are never its artifact, though their suffix matches one
# (XGBoost's .json): training metrics and MLflow's input examples.
SIDE_FILES = frozenset({"metrics.json", "input_example.json", "serving_input_example.json"})


def artifact_candidates(folder: Path) -> list[Path]:
    """The files in ``folder`` that may be a model's artifact, sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name not in SIDE_FILES and not p.name.startswith("."))


def detect_runtime(artifact: Path) -> str:
    """The runtime name for an artifact from its file suffix (or the files inside a folder);
    a folder with an MLflow ``MLmodel`` file is served as that file says."""
    if mlmodel.is_mlflow_model(artifact):
        return mlmodel.resolve(artifact).runtime
    candidates = [artifact] if artifact.is_file() else artifact_candidates(artifact)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except ImportError:
            continue
        for path in candidates:
            if path.name.endswith(cls.artifact_suffixes):
                return ep.name  # type: ignore[no-any-return]
    raise ModelLoadError(f"cannot tell the runtime of {artifact}: no known artifact suffix; "
                         f"name one with 'runtime:' in model-settings.yaml")


def find_artifact(folder: Path, suffixes: tuple[str, ...]) -> Path:
    """The single artifact inside a model folder, for runtimes that take one file; in an
    MLflow model folder, the file (or the folder to look into) its ``MLmodel`` names."""
    if folder.is_file():
        return folder
    named = _mlflow_artifact(folder, suffixes)
    if named is not None:
        return named if named.is_file() else find_artifact(named, suffixes)
    matches = [p for p in artifact_candidates(folder) if p.name.endswith(suffixes)]
    if not matches:
        raise ModelLoadError(f"no artifact ending in {', '.join(suffixes)} in {folder}")
    if len(matches) > 1:
        raise ModelLoadError(f"several artifacts in {folder}: {', '.join(m.name for m in matches)}; "
                             "keep one per version folder")
    return matches[0]


def _mlflow_artifact(folder: Path, suffixes: tuple[str, ...]) -> Path | None:
    """What ``folder``'s MLmodel names, when the runtime asking (known by its suffixes) is the
    one the MLmodel is served by; a model-settings.yaml naming another runtime wins."""
    if not mlmodel.is_mlflow_model(folder):
        return None
    try:
        model = mlmodel.resolve(folder)
        served_by = resolve_runtime(model.runtime)
    except ModelLoadError:
        return None  # only reached when settings named the runtime: its own suffixes decide
    return model.artifact if served_by.artifact_suffixes == suffixes else None
