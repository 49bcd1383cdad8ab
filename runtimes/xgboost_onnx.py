"""XGBoost tree boosters compiled to ONNX (``parameters: {compile: onnx}``).

XGBoost spends ~300 µs of fixed overhead on every small ``inplace_predict`` (a 100-tree,
depth-6 model: ~430 µs for one row), while ONNX Runtime's TreeEnsemble evaluates the same
trees in ~30 µs. onnxmltools converts the booster; XGBoost itself compares float32 features
with float32 thresholds, as ONNX's tree operators do, so decisions are the same and only the
float32 summation order can differ: the copy is kept when labels are equal and probabilities or
values agree to 1e-5 relative / 1e-6 absolute on probe rows (with missing values) — see
``runtimes/compiled.py`` for the cache and verification.

Compiled: tree boosters with objective ``binary:logistic``, ``multi:softprob`` or
``reg:squarederror``, without a recorded best iteration. Others are served by XGBoost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import compiled
from runtimes.compiled import CompiledModel, Tolerance
from serving.protocol.types import TensorSpec

DISTS = ("xgboost-cpu", "xgboost")
OBJECTIVES = frozenset({"binary:logistic", "multi:softprob", "reg:squarederror"})
SCALES = (0.01, 1.0, 100.0)
TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)
SESSION_OUTPUT = {"predict": 0, "predict_proba": 1}  # onnxmltools: label, probabilities


def load_cached(artifact: Path) -> CompiledModel | None:
    return compiled.load_cached(artifact, DISTS)


def compile_verified(booster: Any, artifact: Path, *, objective: str, linear: bool,
                     best_iteration: bool, inputs: list[TensorSpec], outputs: list[TensorSpec],
                     reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                     root: Path | None = None, cache: bool = True
                     ) -> tuple[CompiledModel | None, str]:
    """Convert, verify against ``reference`` (the runtime's own predict) and cache."""
    if linear:
        return None, "gblinear boosters are not compiled"
    if objective not in OBJECTIVES:
        return None, f"objective {objective} is not compiled (only {', '.join(sorted(OBJECTIVES))})"
    if best_iteration:
        return None, "boosters that predict with a best iteration are not compiled"
    try:
        from onnxmltools.convert import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError:
        return None, "onnxmltools is not installed (pip install 'turnout[xgboost-onnx]')"
    n_features = int(inputs[0].shape[1])
    try:
        onx = convert_xgboost(booster, initial_types=[("input", FloatTensorType([None, n_features]))],
                              target_opset=15)
    except Exception as exc:  # the converter raises many types for what it cannot convert
        return None, f"onnxmltools cannot convert this booster: {exc}"
    methods = [spec.name for spec in outputs]
    regression = objective.startswith("reg:")
    meta = {"methods": {m: [0 if regression else SESSION_OUTPUT[m], None] for m in methods},
            "converter": "onnxmltools",
            "accepts_non_finite": True,  # NaN is XGBoost's missing value, and the tree ops'
            "inputs": [compiled.spec_json(s) for s in inputs],
            "outputs": [compiled.spec_json(s) for s in outputs], "objective": objective}
    rows = compiled.probe_rows(n_features, np.float32, SCALES, missing=True)
    return compiled.store_verified(onx.SerializeToString(), meta, artifact, DISTS,
                                   reference, rows, TOLERANCE, root, cache=cache)
