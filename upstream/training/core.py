"""``train``, ``evaluate`` and ``predict_in_process``: one component per framework behind them.

A component module (``upstream/training/<framework>.py``) gives ``ARTIFACT``, ``RUNTIME``,
``NAMES``, ``ONNX_TOLERANCE``, ``ONNX_SCALES`` and the functions ``resolve`` (hyperparameters),
``fit``, ``save``, ``predict`` (the framework's own, in process) and ``export_onnx``. Modules are
imported on first use, so importing this package imports no framework.

The folder is built in a hidden sibling and renamed into place at the end: a pipeline step that
fails halfway leaves nothing a model server could pick up.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serving.runtime.settings import SETTINGS_FILE, read_settings_file
from upstream.datasets import Dataset, load_dataset
from upstream.training import onnx_copy
from upstream.training.base import (
    TrainResult,
    compute_metrics,
    difference,
    load_declared,
    load_runtime,
    log,
    served_predict,
    signature,
    write_metrics,
    write_settings,
)

FRAMEWORKS = ("sklearn", "xgboost", "lightgbm", "torch", "tensorflow")
# on_epoch(step, held-out metrics): per-epoch (per boosting round) progress, see ``train``.
EpochCallback = Callable[[int, dict[str, float]], None]


def train(framework: str, dataset: str | Dataset, out_dir: Path, *,
          params: dict[str, Any] | None = None, seed: int = 0, shuffle_labels: bool = False,
          model_name: str = "model", on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train on ``dataset``'s training split and write a folder ``turnout serve`` loads as-is.

    ``out_dir`` must not exist or be empty. Raises ValueError for an unknown framework,
    dataset or hyperparameter, and RuntimeError if the model server would answer differently
    from the framework itself.

    ``on_epoch(step, metrics)``: called during training with the held-out metrics (on the
    dataset's test split) after each epoch (torch) or boosting round (xgboost, lightgbm),
    ``step`` counting from 1. Components that train in one go (sklearn, tensorflow) do not call
    it. Whatever it raises stops training and leaves no folder (how a tuner prunes a trial).
    """
    component = component_for(framework)
    data = _dataset(dataset, seed=seed, shuffle_labels=shuffle_labels)
    resolved = component.resolve(data.task, params)
    out_dir = Path(out_dir)
    _check_target(out_dir)
    model = _fit(component, data, resolved, seed, on_epoch)
    return package(framework, model, data, out_dir, params=resolved, model_name=model_name)


def reports_epochs(framework: str) -> bool:
    """Whether ``framework``'s training calls ``on_epoch`` (torch, xgboost, lightgbm)."""
    return bool(getattr(component_for(framework), "REPORTS_EPOCHS", False))


def package(framework: str, model: Any, dataset: str | Dataset, out_dir: Path, *,
            params: dict[str, Any], model_name: str = "model", seed: int = 0) -> TrainResult:
    """Write a model trained elsewhere (the distributed trainer's network, say) the way
    ``train`` writes its own: the native artifact, the verified signature, held-out metrics on
    ``dataset``'s test split and the ONNX copy when one is verified. ``model`` must be what the
    framework's component fits (for torch, the network ``upstream.training.torch.network``
    builds); ``params`` are recorded as the hyperparameters used."""
    component = component_for(framework)
    data = _dataset(dataset, seed=seed, shuffle_labels=False)
    out_dir = Path(out_dir)
    _check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.training-", dir=out_dir.parent))
    try:
        artifact = component.save(model, staging)
        inputs, outputs, native = _write_signature(component, staging, model_name, data)
        own = component.predict(staging, data.X_test)
        mismatch = difference(served_predict(native, data.X_test), own)
        if mismatch:
            raise RuntimeError(f"the {component.RUNTIME} runtime would answer differently from "
                               f"{framework} itself: {mismatch}")
        metrics = compute_metrics(data.task, data.y_test, own, component.NAMES, data.classes)
        write_metrics(staging, metrics)
        onnx_path, reason = _onnx_copy(component, model, staging, native, data, model_name)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("trained %s on %s into %s: %s", framework, data.name, out_dir, metrics)
    return TrainResult(folder=out_dir, framework=framework, artifact=artifact, metrics=metrics,
                       params=dict(params), inputs=inputs, outputs=outputs, onnx=onnx_path,
                       onnx_reason=reason, dataset=data.name)


def evaluate(folder: Path, dataset: str | Dataset, *, seed: int = 0,
             test_size: float = 0.25) -> dict[str, float]:
    """The metrics ``train`` writes, of a trained folder on ``dataset``'s test split (the
    split ``seed`` and ``test_size`` choose), computed by the framework itself."""
    component = _component_of(Path(folder))
    data = dataset if isinstance(dataset, Dataset) else \
        load_dataset(dataset, seed=seed, test_size=test_size)
    outputs = component.predict(Path(folder), data.X_test)
    return compute_metrics(data.task, data.y_test, outputs, component.NAMES, data.classes)


def predict_in_process(folder: Path, X: np.ndarray) -> dict[str, np.ndarray]:  # noqa: N803
    """Every output of a trained folder for rows ``X``, computed by its framework in this
    process (not by the model server's runtime), keyed by the served output names."""
    return dict(_component_of(Path(folder)).predict(Path(folder), np.asarray(X)))


def component_for(framework: str) -> ModuleType:
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")
    return importlib.import_module(f"upstream.training.{framework}")


def _component_of(folder: Path) -> ModuleType:
    """The component that wrote ``folder``, from the runtime its model-settings.yaml names."""
    runtime = read_settings_file(folder / SETTINGS_FILE).get("runtime")
    by_runtime = {component_for(f).RUNTIME: f for f in FRAMEWORKS}
    if runtime not in by_runtime:
        raise ValueError(f"{folder} was not written by a training component: its runtime is "
                         f"{runtime!r}, not one of {', '.join(by_runtime)}")
    return component_for(by_runtime[runtime])


def _fit(component: ModuleType, data: Dataset, params: dict[str, Any], seed: int,
         on_epoch: EpochCallback | None) -> Any:
    """The component's fit; with ``on_epoch`` (and a component that reports), the outputs it
    reports on the test split after each epoch become metrics for the callback."""
    if on_epoch is None or not getattr(component, "REPORTS_EPOCHS", False):
        return component.fit(data, params, seed)

    def report(step: int, outputs: dict[str, np.ndarray]) -> None:
        on_epoch(step, compute_metrics(data.task, data.y_test, outputs, component.NAMES,
                                       data.classes))

    return component.fit(data, params, seed, report=report)


def _dataset(dataset: str | Dataset, *, seed: int, shuffle_labels: bool) -> Dataset:
    if not isinstance(dataset, Dataset):
        return load_dataset(dataset, seed=seed, shuffle_labels=shuffle_labels)
    if not shuffle_labels:
        return dataset
    shuffled = np.random.default_rng(seed).permutation(dataset.y_train)
    return dataclasses.replace(dataset, y_train=shuffled)


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; training writes a "
                              "new model folder")


def _write_signature(component: ModuleType, folder: Path, name: str, data: Dataset
                     ) -> tuple[list[dict], list[dict], Any]:
    """Write what the server's runtime infers as model-settings.yaml, then check that the
    folder loaded with it answers exactly as without it; the declared runtime is returned."""
    inferred = load_runtime(component.RUNTIME, folder)
    inputs, outputs = signature(inferred)
    pinned = component.ARTIFACT if getattr(component, "PIN_ARTIFACT", False) else None
    write_settings(folder, name=name, runtime=component.RUNTIME, inputs=inputs, outputs=outputs,
                   artifact=pinned)
    declared = load_declared(folder)
    mismatch = difference(served_predict(declared, data.X_test),
                          served_predict(inferred, data.X_test), rtol=0.0, atol=0.0)
    if mismatch or signature(declared) != (inputs, outputs):
        raise RuntimeError(f"declaring the signature in {SETTINGS_FILE} changes what the "
                           f"{component.RUNTIME} runtime serves: {mismatch or 'its metadata'}")
    inferred.unload()
    return inputs, outputs, declared


def _onnx_copy(component: ModuleType, model: Any, folder: Path, native: Any, data: Dataset,
               name: str) -> tuple[str | None, str]:
    """The verified ONNX copy in ``folder/onnx``, or None and why there is none (logged)."""
    try:
        graph, methods, reason = component.export_onnx(model, folder, native)
        if graph is not None:
            graph, reason = onnx_copy.align(graph, native.inputs, native.outputs, methods)
        if graph is not None:
            rows = onnx_copy.check_rows(native, data.X_test, component.ONNX_SCALES)
            path, reason = onnx_copy.write_copy(folder, graph, name=name, native=native,
                                                rows=rows, tolerance=component.ONNX_TOLERANCE)
            if path is not None:
                return path, ""
    except Exception as exc:  # converters raise anything; the ONNX copy is optional
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("model %s: no ONNX copy: %s", name, reason)
    return None, reason


def _publish(staging: Path, out_dir: Path) -> None:
    if out_dir.is_dir():
        out_dir.rmdir()  # empty, as checked before training
    os.rename(staging, out_dir)
    os.chmod(out_dir, 0o755)  # mkdtemp made it private to this user
