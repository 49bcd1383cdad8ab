"""What every training component shares: the result record, hyperparameter checks, held-out
metrics, and the files beside the artifact (``model-settings.yaml``, ``metrics.json``).

The signature written to ``model-settings.yaml`` is not guessed: the folder is loaded with the
same runtime class the model server uses, in this process, and its inputs and outputs are
written down. The folder is then loaded again with that file and must answer exactly as before,
so declaring the signature cannot change what the server predicts.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runtimes.compiled import spec_json
from serving.protocol.datatypes import dtype_for
from serving.runtime.base import Runtime, resolve_runtime
from serving.runtime.settings import SETTINGS_FILE, build_settings, read_settings_file

log = logging.getLogger("turnout.upstream.training")

METRICS_FILE = "metrics.json"
ONNX_DIR = "onnx"  # not a number, so the model server never takes it for a version folder


@dataclass(frozen=True)
class TrainResult:
    """What a training component wrote, for the pipeline step and the registry to record."""

    folder: Path
    framework: str
    artifact: str  # the artifact's name inside ``folder``
    metrics: dict[str, float]
    params: dict[str, Any]  # every hyperparameter used, defaults included
    inputs: list[dict]  # the signature as written in model-settings.yaml
    outputs: list[dict]
    onnx: str | None  # the verified ONNX copy, relative to ``folder``
    onnx_reason: str  # why there is no ONNX copy; "" when there is one
    dataset: str


@dataclass(frozen=True)
class OutputNames:
    """Which served output holds class labels, probabilities and regression values; LightGBM's
    runtime, like KServe's, names them differently from the rest."""

    label: str = "predict"
    proba: str | None = "predict_proba"
    value: str = "predict"


def resolve_params(framework: str, defaults: Mapping[str, Any],
                   given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``given`` over ``defaults``; a name that is not a default is a typo, not an extra."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {framework} hyperparameter(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(defaults))}")
    return {**defaults, **given}


def check_numbers(params: Mapping[str, Any], *, ints: tuple[str, ...] = (),
                  floats: tuple[str, ...] = ()) -> None:
    """Positive whole numbers and positive floats, refused before a framework's own errors."""
    for name in ints:
        value = params.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"hyperparameter {name} must be a whole number >= 1, not {value!r}")
    for name in floats:
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not value > 0):
            raise ValueError(f"hyperparameter {name} must be a number > 0, not {value!r}")


def hidden_sizes(value: Any) -> list[int]:
    """``hidden``: one width, or a list of widths for several hidden layers."""
    sizes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sizes, list | tuple) or not sizes or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"hyperparameter hidden must be a width >= 1 or a list of them, "
                         f"not {value!r}")
    return [int(s) for s in sizes]


def column_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 where a column is constant)."""
    mean = values.astype(np.float64).mean(axis=0)
    scale = values.astype(np.float64).std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


def compute_metrics(task: str, y_true: np.ndarray, outputs: Mapping[str, np.ndarray],
                    names: OutputNames, classes: list | None) -> dict[str, float]:
    """Held-out metrics: accuracy, macro F1 and log loss (when there are probabilities) for
    classifiers; RMSE, R² and MAE for regressors."""
    from sklearn import metrics

    if task == "regression":
        predicted = np.asarray(outputs[names.value], dtype=np.float64).reshape(-1)
        return {"rmse": float(np.sqrt(metrics.mean_squared_error(y_true, predicted))),
                "r2": float(metrics.r2_score(y_true, predicted)),
                "mae": float(metrics.mean_absolute_error(y_true, predicted))}
    labels = np.asarray(outputs[names.label]).reshape(-1)
    result = {"accuracy": float(metrics.accuracy_score(y_true, labels)),
              "f1_macro": float(metrics.f1_score(y_true, labels, average="macro"))}
    if names.proba is not None and names.proba in outputs:
        proba = np.asarray(outputs[names.proba], dtype=np.float64)
        if proba.ndim == 1:  # a binary booster's probability of class 1
            proba = np.column_stack((1.0 - proba, proba))
        with warnings.catch_warnings():  # float32 probabilities sum to 1 within 1e-7 only
            warnings.filterwarnings("ignore", "The y_prob values do not sum to one")
            result["log_loss"] = float(metrics.log_loss(y_true, proba, labels=classes))
    return result


def _native(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with ``compile: none``: training checks the framework's own path; the server
    verifies its ONNX copy (compile: auto) against that path at load, to the tolerance
    runtimes/compiled.py states."""
    return {**fields, "parameters": {**(fields.get("parameters") or {}), "compile": "none"}}


def load_runtime(runtime_name: str, folder: Path, **settings: Any) -> Runtime:
    """The model server's runtime for ``folder``, loaded here; ``settings`` as in the file."""
    runtime = resolve_runtime(runtime_name)(
        build_settings(**_native({"name": "training-check", **settings, "artifact": folder})))
    runtime.load()
    return runtime


def served_predict(runtime: Runtime, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output as the server computes it for rows ``x`` sent in its declared datatype."""
    spec = runtime.inputs[0]
    features = np.ascontiguousarray(x, dtype=dtype_for(spec.datatype))
    return runtime.predict({spec.name: features}, [s.name for s in runtime.outputs])


def signature(runtime: Runtime) -> tuple[list[dict], list[dict]]:
    return [spec_json(s) for s in runtime.inputs], [spec_json(s) for s in runtime.outputs]


def write_settings(folder: Path, *, name: str, runtime: str, inputs: list[dict],
                   outputs: list[dict], artifact: str | None = None) -> None:
    """``artifact``: pin the artifact file (``storage_uri``, relative to the folder) where the
    runtime would otherwise also take another file of the folder for one."""
    fields: dict[str, Any] = {"name": name, "runtime": runtime}
    if artifact is not None:
        fields["storage_uri"] = artifact
    fields.update(inputs=inputs, outputs=outputs)
    (folder / SETTINGS_FILE).write_text(yaml.safe_dump(fields, sort_keys=False))


def load_declared(folder: Path) -> Runtime:
    """``folder`` loaded the way ``turnout serve`` loads it: with its model-settings.yaml (a
    relative ``storage_uri`` names a file in the folder, as the repository resolves it)."""
    fields = read_settings_file(folder / SETTINGS_FILE)
    runtime = str(fields.pop("runtime"))
    pinned = fields.pop("storage_uri", None)
    runtime_class = resolve_runtime(runtime)
    artifact = folder / pinned if pinned else folder
    loaded = runtime_class(build_settings(**_native({"name": "training-check", **fields,
                                                     "artifact": artifact})))
    loaded.load()
    return loaded


def write_metrics(folder: Path, values: Mapping[str, float]) -> None:
    (folder / METRICS_FILE).write_text(json.dumps(dict(values), indent=2) + "\n")


def difference(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], *,
               rtol: float = 1e-6, atol: float = 1e-7) -> str:
    """How two sets of outputs differ (labels exactly, values within rtol/atol); "" if not."""
    if sorted(got) != sorted(want):
        return f"outputs {sorted(got)} instead of {sorted(want)}"
    for name, expected in want.items():
        have, expected = np.asarray(got[name]), np.asarray(expected)
        if have.shape != expected.shape:
            return f"{name} has shape {list(have.shape)} instead of {list(expected.shape)}"
        if expected.dtype.kind in "iub" or have.dtype.kind in "iub":
            if not np.array_equal(have, expected):
                return f"{name} differs on {int((have != expected).sum())} rows"
        elif not np.allclose(have, expected, rtol=rtol, atol=atol):
            return f"{name} differs by up to {float(np.max(np.abs(have - expected))):.3g}"
    return ""
