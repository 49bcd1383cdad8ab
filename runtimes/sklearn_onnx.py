"""scikit-learn linear models compiled to ONNX (``parameters: {compile: onnx}``).

Importing scikit-learn pulls in SciPy and pandas, although a fitted linear model is a matrix
product. skl2onnx converts such estimators in float64; the copy is kept when labels are equal
and values agree to 1e-9 relative on probe rows across six orders of magnitude (see
``runtimes/compiled.py`` for the cache and verification). Only estimators whose conversion is
exact in float64 are compiled: linear models with integer labels. Tree ensembles are not (ONNX
tree operators compare thresholds in float32, which can flip a decision made in float64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtimes import compiled
from runtimes.compiled import CompiledModel, Tolerance
from serving.protocol.types import TensorSpec

DISTS = ("scikit-learn",)
CLASSIFIERS = frozenset({"LogisticRegression", "RidgeClassifier", "SGDClassifier"})
REGRESSORS = frozenset({"LinearRegression", "Ridge", "Lasso", "ElasticNet", "SGDRegressor",
                        "BayesianRidge", "HuberRegressor", "LassoLars", "Lars"})
SCALES = (0.01, 1.0, 100.0, 10_000.0)
TOLERANCE = Tolerance(rtol=1e-9, atol=0.0)
SESSION_OUTPUT = {"predict": 0, "predict_proba": 1}  # skl2onnx's output order


def load_cached(artifact: Path) -> CompiledModel | None:
    return compiled.load_cached(artifact, DISTS)


def compile_verified(model: Any, artifact: Path, inputs: list[TensorSpec],
                     outputs: list[TensorSpec], accepts_non_finite: bool,
                     root: Path | None = None, cache: bool = True
                     ) -> tuple[CompiledModel | None, str]:
    """Convert, verify and cache; returns the compiled model, or None and why not."""
    reason = _unsupported(model, inputs)
    if reason:
        return None, reason
    try:
        from skl2onnx import to_onnx
    except ImportError:
        return None, "skl2onnx is not installed (pip install 'turnout[sklearn-onnx]')"
    methods = [spec.name for spec in outputs]
    n_features = int(inputs[0].shape[1])
    options = {id(model): {"zipmap": False}} if "predict_proba" in methods else None
    try:
        onx = to_onnx(model, np.zeros((1, n_features), dtype=np.float64), options=options,
                      target_opset=17)
    except Exception as exc:  # skl2onnx raises many types for unsupported estimators
        return None, f"skl2onnx cannot convert {type(model).__name__}: {exc}"
    meta = {"methods": {m: [SESSION_OUTPUT[m], None] for m in methods},
            "converter": "skl2onnx", "accepts_non_finite": accepts_non_finite,
            "inputs": [compiled.spec_json(s) for s in inputs],
            "outputs": [compiled.spec_json(s) for s in outputs],
            "estimator": type(model).__name__}

    def reference(rows: np.ndarray) -> dict[str, np.ndarray]:
        return {m: np.asarray(getattr(model, m)(rows)) for m in methods}

    rows = compiled.probe_rows(n_features, np.float64, SCALES)
    # atol scales with the values (a regression can predict in the millions)
    scale = float(np.abs(reference(rows)[methods[0]]).max() or 1.0)
    return compiled.store_verified(onx.SerializeToString(), meta, artifact, DISTS, reference,
                                   rows, Tolerance(TOLERANCE.rtol, TOLERANCE.rtol * scale),
                                   root, cache=cache)


def _unsupported(model: Any, inputs: list[TensorSpec]) -> str:
    kind = type(model).__name__
    if kind not in CLASSIFIERS | REGRESSORS:
        return f"{kind} is not one of the estimators compiled exactly (linear models)"
    if getattr(model, "feature_names_in_", None) is not None:
        return "the estimator was fitted on named columns"
    if len(inputs) != 1 or inputs[0].datatype != "FP64" or len(inputs[0].shape) != 2:
        return "only one 2-D FP64 input is compiled"
    classes = getattr(model, "classes_", None)
    if kind in CLASSIFIERS and classes is not None and np.asarray(classes).dtype.kind not in "iu":
        return "only integer class labels are compiled"
    return ""
