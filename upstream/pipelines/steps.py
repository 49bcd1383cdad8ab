"""What the pipeline components do, as plain functions: train, gate, register, deploy.

The ``@dsl.component`` functions in :mod:`upstream.pipelines.components` are shipped to the task
as source text, so they can only hold imports and a call; the work is here, where it can be
imported, tested without kfp, and shared by the cluster image (which installs Turnout).

Nothing here imports kfp. MLflow is imported by the registry, inside its methods.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Tasks that use the registry set these before MLflow is imported (the registry does too).
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_CONFIGURE_LOGGING": "false"}
METRICS_FILE = "metrics.json"  # what upstream.training writes beside the model
REFRESH_TIMEOUT_S = 120.0


def quiet_mlflow() -> None:
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


def parse_hyperparameters(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Hyperparameters as a JSON object (a pipeline parameter is a string) or a mapping."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    if not str(text).strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"hyperparameters are not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"hyperparameters must be a JSON object, not {text!r}")
    return value


def _plain(value: Any) -> Any:
    """JSON-safe (artifact metadata is stored as JSON / a protobuf Struct)."""
    return json.loads(json.dumps(value, default=str))


def train(framework: str, dataset: str, out_dir: str | Path, *, hyperparameters: Any = None,
          seed: int = 0, shuffle_labels: bool = False, model_name: str = "model"
          ) -> dict[str, Any]:
    """Train into ``out_dir`` (a new folder); the metadata to put on the Model artifact."""
    from upstream.training import train as train_folder

    result = train_folder(framework, dataset, Path(out_dir),
                          params=parse_hyperparameters(hyperparameters), seed=int(seed),
                          shuffle_labels=bool(shuffle_labels), model_name=model_name)
    return _plain({
        "framework": result.framework, "dataset": result.dataset, "artifact": result.artifact,
        "metrics": result.metrics, "params": result.params, "inputs": result.inputs,
        "outputs": result.outputs, "onnx": result.onnx, "onnx_reason": result.onnx_reason,
        "seed": int(seed), "shuffle_labels": bool(shuffle_labels), "model_name": model_name,
        # Artifact metadata is a protobuf Struct on the way to the next task: every number
        # becomes a float (100 -> 100.0). The exact values travel as JSON text.
        "params_json": json.dumps(result.params, sort_keys=True, default=str),
    })


def read_metrics(folder: str | Path, metadata: Mapping[str, Any] | None = None
                 ) -> dict[str, float]:
    """The trained folder's held-out metrics: its ``metrics.json`` (what training wrote and what
    the registry records), else the artifact's metadata."""
    path = Path(folder) / METRICS_FILE
    if path.is_file():
        values = json.loads(path.read_text())
    else:
        values = dict((metadata or {}).get("metrics") or {})
    if not isinstance(values, dict) or not values:
        raise ValueError(f"no metrics for the model in {folder} (no {METRICS_FILE}, none in "
                         "its metadata)")
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float)}


@dataclass(frozen=True)
class Gate:
    passed: bool
    value: float
    reason: str  # one line for the task log


def gate(metrics: Mapping[str, float], metric: str, threshold: float, *,
         higher_is_better: bool = True) -> Gate:
    """Whether ``metric`` clears ``threshold`` (>= when higher is better, <= otherwise). An
    unknown metric is an error, not a closed gate: the pipeline is misconfigured."""
    if metric not in metrics:
        raise ValueError(f"the model has no metric {metric!r}; it has "
                         f"{', '.join(sorted(metrics)) or 'none'}")
    value = float(metrics[metric])
    if math.isnan(value):
        return Gate(False, value, f"{metric} is NaN")
    passed = value >= threshold if higher_is_better else value <= threshold
    sign = (">=" if higher_is_better else "<=") if passed else ("<" if higher_is_better else ">")
    verdict = "passed" if passed else "failed"
    return Gate(passed, value, f"gate {verdict}: {metric} {value:.6g} {sign} {threshold:.6g}")


def lineage(*, pipeline: str, run_name: str, run_id: str, task: str = "",
            metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``turnout.lineage.<key>`` tags of a version registered by a pipeline: which pipeline
    and run made it, from which data."""
    meta = metadata or {}
    seed = meta.get("seed")
    found = {"pipeline": pipeline, "pipeline_run": run_name, "pipeline_run_id": run_id,
             "pipeline_task": task, "dataset": meta.get("dataset"),
             "seed": int(seed) if isinstance(seed, int | float) else seed,
             "shuffle_labels": meta.get("shuffle_labels")}
    return {k: str(v) for k, v in found.items() if v not in (None, "")}


def registry(tracking_uri: str = "", state_dir: str = ""):  # noqa: ANN201 - lazy import
    """The registry a task was told about: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else
    the SQLite database in ``state_dir`` (``.turnout`` when empty)."""
    quiet_mlflow()
    from upstream.registry import Registry

    return Registry(tracking_uri or None, state_dir=Path(state_dir) if state_dir else None)


def register(folder: str | Path, metadata: Mapping[str, Any], model_name: str, *,
             tracking_uri: str = "", state_dir: str = "", lineage_tags: Mapping[str, str],
             description: str = ""):  # noqa: ANN201 - upstream.registry.ResolvedVersion
    """A new version of ``model_name`` holding ``folder``'s files, with the metrics training
    measured (its metrics.json), its hyperparameters, the signature in its model-settings.yaml,
    its framework and ``lineage_tags``."""
    framework = metadata.get("framework")
    if not framework:
        raise ValueError("the model artifact does not say which framework made it (no "
                         "'framework' in its metadata): was it written by train_model?")
    return registry(tracking_uri, state_dir).register(
        Path(folder), model_name, framework=str(framework),
        metrics=read_metrics(folder, metadata), params=_params(metadata),
        lineage=dict(lineage_tags), description=description)


def _params(metadata: Mapping[str, Any]) -> dict[str, Any]:
    text = metadata.get("params_json")
    if isinstance(text, str) and text:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    return dict(metadata.get("params") or {})


@dataclass(frozen=True)
class Deployed:
    uri: str          # models:/name@alias
    refreshed: bool   # a running plane was asked to check the alias now, and answered
    plane: str        # what the plane said, why it was not reached, or "" when not asked


def deploy(model_name: str, version: str, alias: str, *, tracking_uri: str = "",
           state_dir: str = "", service: str = "",
           timeout: float = REFRESH_TIMEOUT_S) -> Deployed:
    """Point ``alias`` at ``version``; with ``service``, ask a running ``turnout up`` plane to
    check the alias now (``turnout rollout refresh``) instead of at its next poll. A plane
    that is not there is reported, not an error: it will see the alias when it runs."""
    registry(tracking_uri, state_dir).set_alias(model_name, alias, str(version))
    uri = f"models:/{model_name}@{alias}"
    if not service:
        return Deployed(uri, False, "")
    ok, said = refresh_plane(service, state_dir, timeout=timeout)
    return Deployed(uri, ok, said)


def refresh_plane(service: str, state_dir: str = "", *,
                  timeout: float = REFRESH_TIMEOUT_S) -> tuple[bool, str]:
    """``turnout rollout refresh SERVICE [--state-dir DIR]`` as a child process (upstream/ never
    imports the control plane): whether the plane answered, and its last line."""
    command = [sys.executable, "-m", "serving.cli", "rollout", "refresh", service]
    if state_dir:
        command += ["--state-dir", state_dir]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return False, f"turnout rollout refresh {service}: no answer in {timeout:.0f} s"
    except OSError as exc:
        return False, f"turnout rollout refresh {service}: {exc}"
    text = done.stdout if done.returncode == 0 else done.stderr or done.stdout
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = lines[-1] if lines else f"exit status {done.returncode}"
    return done.returncode == 0, said
