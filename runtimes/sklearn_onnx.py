"""scikit-learn linear models compiled to ONNX once, verified against the estimator, and cached.

Why: importing scikit-learn pulls in SciPy and pandas — about 2.3 s and a large share of an idle
server's memory on our machines — although a fitted linear model is a matrix product. With
``parameters: {compile: onnx}`` in model-settings.yaml the sklearn runtime converts the
estimator with skl2onnx in double precision, runs both on probe rows across several orders of
magnitude, and keeps the ONNX copy only when labels are equal and values agree to 1e-9
relative. The copy is cached under ``$XDG_CACHE_HOME/turnout/compiled``, keyed by the artifact's
SHA-256 and the installed scikit-learn and ONNX Runtime versions, so later starts load it with
ONNX Runtime and never import scikit-learn.

Only estimators whose conversion is exact in float64 are compiled (linear models with numeric
labels; tree ensembles are not: ONNX tree operators compare thresholds in float32). Anything
else is served by scikit-learn as before, with the reason logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from serving.lazy import LazyModule
from serving.protocol.types import TensorSpec
from serving.storage import default_cache_dir

ort = LazyModule("onnxruntime")
log = logging.getLogger("turnout.runtimes.sklearn")

FORMAT = 1
CLASSIFIERS = frozenset({"LogisticRegression", "RidgeClassifier", "SGDClassifier"})
REGRESSORS = frozenset({"LinearRegression", "Ridge", "Lasso", "ElasticNet", "SGDRegressor",
                        "BayesianRidge", "HuberRegressor", "LassoLars", "Lars"})
PROBE_SCALES = (0.01, 1.0, 100.0, 10_000.0)
RTOL = 1e-9
SESSION_OUTPUT = {"predict": 0, "predict_proba": 1}  # skl2onnx's output order


@dataclass(frozen=True)
class CompiledModel:
    """An ONNX session standing in for the estimator; outputs keyed by estimator method."""

    session: Any
    input_name: str
    methods: dict[str, int]  # "predict" / "predict_proba" -> index of the session output
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    accepts_non_finite: bool

    def predict(self, features: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        results = self.session.run(None, {self.input_name: features})
        shapes = {spec.name: spec.shape[1:] for spec in self.outputs}
        return {name: results[self.methods[name]].reshape(-1, *shapes[name])
                for name in outputs}


def cache_root() -> Path:
    return default_cache_dir().parent / "compiled"


def cache_key(artifact: Path) -> str:
    digest = hashlib.sha256()
    with artifact.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    versions = f"{FORMAT}|{_version('scikit-learn')}|{_version('onnxruntime')}"
    digest.update(versions.encode())
    return digest.hexdigest()[:32]


def load_cached(artifact: Path, root: Path | None = None) -> CompiledModel | None:
    """The verified ONNX copy of ``artifact`` from an earlier start, or None."""
    if _version("onnxruntime") == "none":
        return None
    folder = (root or cache_root()) / cache_key(artifact)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    log.info("%s: serving the verified ONNX compilation from %s", artifact, folder)
    return _open(folder / "model.onnx", meta)


def compile_verified(model: Any, artifact: Path, inputs: list[TensorSpec],
                     outputs: list[TensorSpec], accepts_non_finite: bool,
                     root: Path | None = None) -> tuple[CompiledModel | None, str]:
    """Convert, verify and cache; returns the compiled model, or None and why not."""
    reason = _unsupported(model, inputs)
    if reason:
        return None, reason
    try:
        from skl2onnx import to_onnx
    except ImportError:
        return None, "skl2onnx is not installed (pip install 'turnout[sklearn-onnx]')"
    methods = {spec.name: SESSION_OUTPUT[spec.name] for spec in outputs}
    n_features = int(inputs[0].shape[1])
    options = {id(model): {"zipmap": False}} if "predict_proba" in methods else None
    try:
        onx = to_onnx(model, np.zeros((1, n_features), dtype=np.float64), options=options,
                      target_opset=17)
    except Exception as exc:  # skl2onnx raises many types for unsupported estimators
        return None, f"skl2onnx cannot convert {type(model).__name__}: {exc}"
    meta = {"methods": methods, "accepts_non_finite": accepts_non_finite,
            "inputs": [_spec_json(s) for s in inputs], "outputs": [_spec_json(s) for s in outputs],
            "estimator": type(model).__name__}
    folder = (root or cache_root()) / cache_key(artifact)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=_ensure(folder.parent)))
    try:
        (staging / "model.onnx").write_bytes(onx.SerializeToString())
        compiled = _open(staging / "model.onnx", meta)
        mismatch = _mismatch(model, compiled, n_features)
        if mismatch:
            return None, f"the ONNX compilation differs from the estimator: {mismatch}"
        (staging / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(staging, folder)
        except OSError:  # another process cached it first: theirs is as good
            shutil.rmtree(staging, ignore_errors=True)
        log.info("%s: compiled %s to ONNX (verified) into %s", artifact, type(model).__name__,
                 folder)
        return compiled, ""
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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


def _mismatch(model: Any, compiled: CompiledModel, n_features: int) -> str:
    rng = np.random.default_rng(0)
    rows = np.concatenate([np.zeros((1, n_features))] +
                          [rng.normal(0.0, scale, (256, n_features)) for scale in PROBE_SCALES])
    got = compiled.predict(rows, list(compiled.methods))
    for method in compiled.methods:
        want = np.asarray(getattr(model, method)(rows))
        have = got[method]
        if have.shape != want.shape or have.dtype != want.dtype:
            return (f"{method} gives {have.dtype}{list(have.shape)}, the estimator "
                    f"{want.dtype}{list(want.shape)}")
        if want.dtype.kind in "iub":
            if not np.array_equal(have, want):
                return f"{method} labels differ on {int((have != want).sum())} probe rows"
        elif not np.allclose(have, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max() or 1)):
            return f"{method} differs by up to {float(np.abs(have - want).max()):.3g}"
    return ""


def _open(path: Path, meta: dict[str, Any]) -> CompiledModel:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return CompiledModel(session=session, input_name=session.get_inputs()[0].name,
                         methods={k: int(v) for k, v in meta["methods"].items()},
                         inputs=[_spec(s) for s in meta["inputs"]],
                         outputs=[_spec(s) for s in meta["outputs"]],
                         accepts_non_finite=bool(meta["accepts_non_finite"]))


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _spec(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(data["name"], data["datatype"], tuple(data["shape"]))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
