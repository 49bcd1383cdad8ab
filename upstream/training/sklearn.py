"""scikit-learn estimators, pickled with joblib as ``model.joblib``.

``estimator`` picks the model; every other hyperparameter is one of that estimator's own
constructor arguments (checked against ``get_params``). The estimator is bare, not a Pipeline,
so linear models qualify for the verified ONNX compilation (runtimes/sklearn_onnx.py); it is
fitted on float64 copies of the features because the server sends FP64 to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtimes.compiled import Tolerance
from serving.runtime.base import Runtime
from upstream.datasets import Dataset
from upstream.training.base import OutputNames

ARTIFACT = "model.joblib"
RUNTIME = "sklearn"
NAMES = OutputNames()
ESTIMATORS: dict[str, dict[str, str]] = {
    "classification": {
        "logistic_regression": "sklearn.linear_model:LogisticRegression",
        "random_forest": "sklearn.ensemble:RandomForestClassifier",
        "gradient_boosting": "sklearn.ensemble:GradientBoostingClassifier",
    },
    "regression": {
        "ridge": "sklearn.linear_model:Ridge",
        "linear": "sklearn.linear_model:LinearRegression",
        "random_forest": "sklearn.ensemble:RandomForestRegressor",
        "gradient_boosting": "sklearn.ensemble:GradientBoostingRegressor",
    },
}
DEFAULT_ESTIMATOR = {"classification": "logistic_regression", "regression": "ridge"}
# Defaults that keep training fast and convergent on the bundled datasets (unscaled features).
ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"solver": "newton-cholesky"},  # second order: unscaled data is fine
    "random_forest": {"n_estimators": 50, "max_depth": 8, "n_jobs": 1},
    "gradient_boosting": {"n_estimators": 50, "max_depth": 3},
}
ONNX_TOLERANCE = Tolerance(rtol=1e-9, atol=1e-12)  # runtimes/sklearn_onnx.py's, float64
ONNX_SCALES = (0.01, 1.0, 100.0, 10_000.0)


def resolve(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``estimator`` plus that estimator's arguments; unknown ones are a ValueError."""
    params = dict(params or {})
    choices = ESTIMATORS[task]
    name = params.pop("estimator", DEFAULT_ESTIMATOR[task])
    if name not in choices:
        raise ValueError(f"unknown sklearn estimator {name!r} for {task}; known: "
                         f"{', '.join(choices)}")
    allowed = _estimator_class(choices[name])().get_params()
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown sklearn hyperparameter(s) {', '.join(unknown)} for {name}; "
                         f"known: estimator, {', '.join(sorted(allowed))}")
    return {"estimator": name, **ESTIMATOR_DEFAULTS.get(name, {}), **params}


def fit(dataset: Dataset, params: dict[str, Any], seed: int) -> Any:
    kwargs = {k: v for k, v in params.items() if k != "estimator"}
    cls = _estimator_class(ESTIMATORS[dataset.task][params["estimator"]])
    if "random_state" in cls().get_params():
        kwargs.setdefault("random_state", seed)
    try:
        model = cls(**kwargs)
        return model.fit(dataset.X_train.astype(np.float64), dataset.y_train)
    except (TypeError, ValueError) as exc:  # sklearn's own parameter validation
        raise ValueError(f"sklearn {params['estimator']}: {exc}") from exc


def save(model: Any, folder: Path) -> str:
    import joblib

    joblib.dump(model, folder / ARTIFACT)
    return ARTIFACT


def predict(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The estimator's own predict (and predict_proba), on the FP64 rows the server passes."""
    import joblib

    model = joblib.load(folder / ARTIFACT)
    features = np.asarray(x, dtype=np.float64)
    result = {"predict": np.asarray(model.predict(features))}
    if hasattr(model, "predict_proba"):
        result["predict_proba"] = np.asarray(model.predict_proba(features))
    return result


def export_onnx(model: Any, folder: Path, native: Runtime
                ) -> tuple[bytes | None, dict[str, list[int | None]], str]:
    """runtimes/sklearn_onnx.py's verified compilation (linear models only)."""
    from runtimes import sklearn_onnx
    from upstream.training.onnx_copy import compile_bytes

    artifact = folder / ARTIFACT
    return compile_bytes(artifact, sklearn_onnx.DISTS, lambda root: sklearn_onnx.compile_verified(
        model, artifact, native.inputs, native.outputs, native.accepts_non_finite, root=root))


def _estimator_class(path: str) -> Any:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
