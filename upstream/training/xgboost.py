"""XGBoost boosters (``XGBClassifier``/``XGBRegressor``), saved as ``model.json``.

The XGBoost runtime takes every ``*.json`` file in a folder for an artifact, so beside
``metrics.json`` the folder would be ambiguous ("several artifacts"). model-settings.yaml
therefore names the artifact with ``storage_uri: model.json``, a path relative to the folder,
which the model server resolves to that one file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
REPORTS_EPOCHS = True
Report = Callable[[int, dict[str, np.ndarray]], None]


def resolve(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    resolved = resolve_params("xgboost", DEFAULTS, params)
    check_numbers(resolved, ints=("n_estimators", "max_depth"),
                  floats=("learning_rate", "subsample", "reg_lambda", "min_child_weight"))
    return resolved


def fit(dataset: Dataset, params: dict[str, Any], seed: int, report: Report | None = None) -> Any:
    """``report(round, outputs)`` after each boosting round with the ensemble so far's
    outputs on the test split (a training callback: the boosting itself is unchanged)."""
    import xgboost as xgb

    cls = xgb.XGBClassifier if dataset.task == "classification" else xgb.XGBRegressor
    extra = {} if report is None else {"callbacks": [_reporter(xgb, dataset, report)]}
    model = cls(**params, random_state=seed, n_jobs=1, tree_method="hist", **extra)
    model.fit(dataset.X_train, dataset.y_train)
    if report is not None:  # the callback is no part of the model (nor of its saved config)
        model.set_params(callbacks=None)
    return model


def _reporter(xgb: Any, dataset: Dataset, report: Report) -> Any:
    features = xgb.DMatrix(np.asarray(dataset.X_test, dtype=np.float32))
    classification = dataset.task == "classification"

    class Reporter(xgb.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            values = np.asarray(model.predict(features, iteration_range=(0, epoch + 1)))
            if not classification:
                report(epoch + 1, {"predict": values})
            elif values.ndim == 1:  # binary: the probability of class 1
                report(epoch + 1, {"predict": (values > 0.5).astype(np.int64),
                                   "predict_proba": np.column_stack((1.0 - values, values))})
            else:
                report(epoch + 1, {"predict": np.argmax(values, axis=1),
                                   "predict_proba": values})
            return False  # go on

    return Reporter()


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
