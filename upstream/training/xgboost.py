"""XGBoost boosters (``XGBClassifier``/``XGBRegressor``), saved as ``model.json``.

The XGBoost runtime takes every ``*.json`` file in a folder for an artifact, so beside
``metrics.json`` the folder would be ambiguous ("several artifacts"). model-settings.yaml
therefore names the artifact with ``storage_uri: model.json``, a path relative to the folder,
which the model server resolves to that one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.compiled import Tolerance
from serving.runtime.base import Runtime
from upstream.datasets import Dataset
from upstream.training.base import OutputNames, check_numbers, resolve_params

ARTIFACT = "model.json"
PIN_ARTIFACT = True  # see the module docstring
RUNTIME = "xgboost"
NAMES = OutputNames()
DEFAULTS: dict[str, Any] = {"n_estimators": 50, "max_depth": 3, "learning_rate": 0.1,
                            "subsample": 1.0, "reg_lambda": 1.0, "min_child_weight": 1.0}
ONNX_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)  # runtimes/xgboost_onnx.py's
ONNX_SCALES = (0.01, 1.0, 100.0)


def resolve(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    resolved = resolve_params("xgboost", DEFAULTS, params)
    check_numbers(resolved, ints=("n_estimators", "max_depth"),
                  floats=("learning_rate", "subsample", "reg_lambda", "min_child_weight"))
    return resolved


def fit(dataset: Dataset, params: dict[str, Any], seed: int) -> Any:
    import xgboost as xgb

    cls = xgb.XGBClassifier if dataset.task == "classification" else xgb.XGBRegressor
    model = cls(**params, random_state=seed, n_jobs=1, tree_method="hist")
    return model.fit(dataset.X_train, dataset.y_train)


def save(model: Any, folder: Path) -> str:
    model.save_model(folder / ARTIFACT)
    return ARTIFACT


def predict(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The scikit-learn wrapper's predict (and predict_proba) on the saved booster."""
    import xgboost as xgb

    path = folder / ARTIFACT
    config = json.loads(xgb.Booster(model_file=str(path)).save_config())
    regression = config["learner"]["objective"]["name"].startswith("reg:")
    model = xgb.XGBRegressor() if regression else xgb.XGBClassifier()
    model.load_model(path)
    features = np.asarray(x, dtype=np.float32)
    if regression:
        return {"predict": np.asarray(model.predict(features))}
    return {"predict": np.asarray(model.predict(features)),
            "predict_proba": np.asarray(model.predict_proba(features))}


def export_onnx(model: Any, folder: Path, native: Runtime
                ) -> tuple[bytes | None, dict[str, list[int | None]], str]:
    """runtimes/xgboost_onnx.py's verified compilation, held to the XGBoost runtime."""
    from runtimes import xgboost_onnx
    from upstream.training.onnx_copy import compile_bytes

    artifact = folder / ARTIFACT
    names = [spec.name for spec in native.outputs]
    return compile_bytes(artifact, xgboost_onnx.DISTS, lambda root: xgboost_onnx.compile_verified(
        model.get_booster(), artifact, objective=getattr(native, "objective", ""), linear=False,
        best_iteration=False, inputs=native.inputs, outputs=native.outputs,
        reference=lambda rows: native.predict({native.inputs[0].name: rows}, names), root=root))
