"""LightGBM boosters (``LGBMClassifier``/``LGBMRegressor``), saved as text ``model.txt``.

The LightGBM runtime answers like KServe's: ``predict`` is the booster's own output (class
probabilities for classifiers) and ``label`` the class. There is no ONNX copy: runtimes/ has no
verified LightGBM compilation to reuse.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.compiled import Tolerance
from serving.runtime.base import Runtime
from upstream.datasets import Dataset
from upstream.training.base import OutputNames, check_numbers, resolve_params

ARTIFACT = "model.txt"
RUNTIME = "lightgbm"
NAMES = OutputNames(label="label", proba="predict", value="predict")
DEFAULTS: dict[str, Any] = {"n_estimators": 50, "max_depth": -1, "learning_rate": 0.1,
                            "num_leaves": 15, "min_child_samples": 10}
ONNX_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)
ONNX_SCALES = (1.0,)
BINARY = frozenset({"binary", "cross_entropy"})
MULTICLASS = frozenset({"multiclass", "multiclassova"})
REPORTS_EPOCHS = True
Report = Callable[[int, dict[str, np.ndarray]], None]


def resolve(task: str, params: dict[str, Any] | None) -> dict[str, Any]:
    resolved = resolve_params("lightgbm", DEFAULTS, params)
    check_numbers(resolved, ints=("n_estimators", "num_leaves", "min_child_samples"),
                  floats=("learning_rate",))
    depth = resolved["max_depth"]
    if not isinstance(depth, int) or isinstance(depth, bool) or depth == 0 or depth < -1:
        raise ValueError(f"hyperparameter max_depth must be -1 (no limit) or >= 1, not {depth!r}")
    return resolved


def fit(dataset: Dataset, params: dict[str, Any], seed: int, report: Report | None = None) -> Any:
    """``report(round, outputs)`` after each boosting round with the ensemble so far's
    outputs on the test split (a training callback: the boosting itself is unchanged)."""
    import lightgbm as lgb

    cls = lgb.LGBMClassifier if dataset.task == "classification" else lgb.LGBMRegressor
    model = cls(**params, random_state=seed, n_jobs=1, deterministic=True, verbose=-1)
    callbacks = [] if report is None else [_reporter(dataset, report)]
    return model.fit(dataset.X_train, dataset.y_train, callbacks=callbacks)


def _reporter(dataset: Dataset, report: Report) -> Callable[[Any], None]:
    features = np.asarray(dataset.X_test, dtype=np.float64)
    classification = dataset.task == "classification"

    def after_round(env: Any) -> None:
        values = np.asarray(env.model.predict(features, num_iteration=env.iteration + 1))
        if not classification:
            report(env.iteration + 1, {"predict": values})
        elif values.ndim == 1:  # binary: the probability of class 1
            report(env.iteration + 1, {"predict": values,
                                       "label": (values > 0.5).astype(np.int64)})
        else:
            report(env.iteration + 1, {"predict": values, "label": np.argmax(values, axis=1)})

    return after_round


def save(model: Any, folder: Path) -> str:
    model.booster_.save_model(str(folder / ARTIFACT))
    return ARTIFACT


def predict(folder: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """``Booster.predict``, and for classifiers the label the sklearn wrapper derives."""
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(folder / ARTIFACT))
    values = np.asarray(booster.predict(np.asarray(x, dtype=np.float64)))
    objective = str(booster.dump_model(num_iteration=1).get("objective", "")).split(" ")[0]
    if objective in BINARY:
        return {"predict": values, "label": (values > 0.5).astype(np.int64)}
    if objective in MULTICLASS:
        return {"predict": values, "label": np.argmax(values, axis=1)}
    return {"predict": values}


def export_onnx(model: Any, folder: Path, native: Runtime
                ) -> tuple[bytes | None, dict[str, list[int | None]], str]:
    return None, {}, "runtimes/ has no verified LightGBM-to-ONNX compilation to reuse"
