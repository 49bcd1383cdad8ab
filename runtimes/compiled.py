"""Models compiled to ONNX once, verified against the framework's own predictions, and cached.

Why: some frameworks cost far more per call or per process than the model they hold — importing
scikit-learn pulls in SciPy and pandas (~2.3 s, ~100 MiB), and XGBoost spends ~300 µs of fixed
overhead on every one-row ``inplace_predict`` of a 100-tree model that ONNX Runtime evaluates in
~30 µs. With ``parameters: {compile: onnx}`` a runtime converts its model with the framework's
ONNX converter, runs the original and the copy on probe rows, and keeps the copy only when
labels are equal and values agree within the framework's tolerance. Without a ``compile``
parameter the mode is ``auto``: the same, but a model that cannot be compiled (unsupported
estimator, converter not installed, verification failed) is served by its framework after one
INFO line; ``compile: none`` opts out, ``compile: onnx`` warns when it cannot compile.
The verified copy is cached under ``$XDG_CACHE_HOME/turnout/compiled``, keyed by the artifact's
SHA-256 and the installed framework and ONNX Runtime versions, so later starts load it with ONNX
Runtime alone.

Framework specifics (which models convert exactly, how) live in ``sklearn_onnx.py`` and
``xgboost_onnx.py``; this module is the shared part: the compiled model, the cache, verification.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime
from serving.runtime.cache import default_cache_dir
from serving.runtime.lazy import LazyModule

ort = LazyModule("onnxruntime")
log = logging.getLogger("turnout.runtimes.compiled")

FORMAT = 2
MODES = (None, "auto", "none", "onnx")


@dataclass(frozen=True)
class Tolerance:
    """How close the compiled copy must be: labels exactly, values within rtol/atol."""

    rtol: float
    atol: float


@dataclass(frozen=True)
class CompiledModel:
    """An ONNX session standing in for the framework's model.

    ``methods`` maps each served output to (index of the session output, column or None): a
    binary classifier's single probability output is column 1 of the session's two.
    """

    session: Any
    input_name: str
    methods: dict[str, tuple[int, int | None]]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    accepts_non_finite: bool
    run: Callable[[list[str], dict[str, np.ndarray]], list[Any]] = field(
        init=False, repr=False, compare=False)
    output_names: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from runtimes.onnx import session_runner

        # frozen: set once here, the dataclass way
        object.__setattr__(self, "run", session_runner(self.session))
        object.__setattr__(self, "output_names", [o.name for o in self.session.get_outputs()])

    def predict(self, features: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        results = self.run(self.output_names, {self.input_name: features})
        shapes = {spec.name: spec.shape[1:] for spec in self.outputs}
        answer = {}
        for name in outputs:
            index, column = self.methods[name]
            value = results[index] if column is None else results[index][:, column]
            answer[name] = value.reshape(-1, *shapes[name])
        return answer


class CompilableRuntime(Runtime):
    """A runtime that can serve its model through the verified ONNX compilation.

    Subclasses call :meth:`load_compilable` from ``load`` and route ``predict`` to
    ``self._compiled`` when it is set.
    """

    framework = ""  # for log messages
    _compiled: CompiledModel | None = None

    def load_compilable(self, path: Path, *, load_native: Callable[[], None],
                        cached: Callable[[Path], CompiledModel | None],
                        compile_native: Callable[[], tuple[CompiledModel | None, str]]) -> None:
        self._compiled = None
        mode = check_mode(self.settings.parameters.get("compile"), path)
        # Declared inputs/outputs could differ from what was verified: compile afresh then.
        if mode is not None and not self.settings.inputs and not self.settings.outputs:
            hit = cached(path)
            if hit is not None:
                return self._serve_compiled(hit)
        load_native()
        if mode is None:
            return
        try:
            model, reason = compile_native()
        except ImportError as exc:  # onnxruntime itself absent in a lean install
            model, reason = None, f"a package is not installed ({exc})"
        except Exception as exc:  # ONNX Runtime refusing the graph; by default, never fatal
            if mode == "onnx":
                raise
            model, reason = None, f"{type(exc).__name__}: {exc}"
        if model is None:
            level = logging.WARNING if mode == "onnx" else logging.INFO
            log.log(level, "%s: not compiled to ONNX (compile: %s), served by %s: %s", path,
                    mode, self.framework, reason)
        else:
            self._serve_compiled(model)

    def _serve_compiled(self, model: CompiledModel) -> None:
        """Predict with the verified ONNX copy; the framework's model is not kept."""
        self._compiled = model
        self.model = model.session
        self.accepts_non_finite = model.accepts_non_finite
        self.declared(model.inputs, model.outputs)
        names = [spec.name for spec in self.outputs]
        self.default_outputs = [n for n in names if n == "predict"] or names


def check_mode(mode: Any, path: Path) -> str | None:
    """The ``compile`` parameter, validated: ``auto`` when absent, None for ``none``."""
    if mode not in MODES:
        raise ModelLoadError(f"{path}: parameters.compile must be 'auto', 'onnx' or 'none', "
                             f"not {mode!r}")
    return None if mode == "none" else (mode or "auto")


def cache_root() -> Path:
    return default_cache_dir().parent / "compiled"


def cache_key(artifact: Path, dists: Sequence[str]) -> str:
    digest = hashlib.sha256()
    with artifact.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    versions = "|".join([str(FORMAT), *(f"{d}={_version(d)}" for d in (*dists, "onnxruntime"))])
    digest.update(versions.encode())
    return digest.hexdigest()[:32]


def load_cached(artifact: Path, dists: Sequence[str], root: Path | None = None
                ) -> CompiledModel | None:
    """The verified ONNX copy of ``artifact`` from an earlier start, or None."""
    if _version("onnxruntime") == "none":
        return None
    folder = (root or cache_root()) / cache_key(artifact, dists)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    log.info("%s: serving the verified ONNX compilation from %s", artifact, folder)
    return _open(folder / "model.onnx", meta)


def store_verified(onnx_bytes: bytes, meta: dict[str, Any], artifact: Path, dists: Sequence[str],
                   reference: Callable[[np.ndarray], dict[str, np.ndarray]], rows: np.ndarray,
                   tolerance: Tolerance, root: Path | None = None, *, cache: bool = True,
                   accept: Callable[[CompiledModel], str] | None = None
                   ) -> tuple[CompiledModel | None, str]:
    """Verify ``onnx_bytes`` against ``reference`` on ``rows``; cache it when it agrees.

    ``meta`` holds methods, inputs, outputs (as JSON) and accepts_non_finite. Returns the
    compiled model, or None and why it was refused. ``cache=False`` (inputs or outputs declared
    in settings) serves without caching: the cache, keyed by the artifact, holds the copy
    compiled for the signature the model itself declares. ``accept``, when given, may still
    refuse a verified copy (it returns why, or "").
    """
    folder = (root or cache_root()) / cache_key(artifact, dists)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compiling-", dir=folder.parent))
    try:
        (staging / "model.onnx").write_bytes(onnx_bytes)
        compiled = _open(staging / "model.onnx", meta)
        mismatch = mismatch_of(compiled, reference, rows, tolerance)
        if mismatch:
            return None, f"the ONNX compilation differs from the model: {mismatch}"
        refused = accept(compiled) if accept is not None else ""
        if refused:
            return None, refused
        (staging / "meta.json").write_text(json.dumps(meta))
        if cache:
            try:
                os.rename(staging, folder)
            except OSError:  # another process cached it first: theirs is as good
                pass
        log.info("%s: compiled to ONNX by %s (%s): verified on %d rows, labels equal, values "
                 "within %.3g (rtol %g, atol %.3g); %s", artifact,
                 meta.get("converter", "?"), meta.get("estimator") or meta.get("objective", "?"),
                 len(rows), largest_difference(compiled, reference, rows), tolerance.rtol,
                 tolerance.atol, f"cached in {folder}" if cache else "not cached (declared signature)")
        return compiled, ""
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def refused_before(artifact: Path, dists: Sequence[str], root: Path | None = None) -> str:
    """Why an earlier start did not serve ``artifact``'s compilation with these versions, or ""
    (for compilers whose refusal is slow to reach: an export, a timing)."""
    marker = (root or cache_root()) / f"{cache_key(artifact, dists)}.refused"
    try:
        return str(json.loads(marker.read_text())["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def remember_refusal(artifact: Path, dists: Sequence[str], reason: str,
                     root: Path | None = None) -> None:
    """Record why ``artifact`` is not compiled, for :func:`refused_before` (best effort)."""
    marker = (root or cache_root()) / f"{cache_key(artifact, dists)}.refused"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"reason": reason}))
    except OSError:
        pass


def mismatch_of(compiled: CompiledModel, reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                rows: np.ndarray, tolerance: Tolerance) -> str:
    """Why ``compiled`` does not reproduce ``reference`` on ``rows``; empty when it does."""
    want_all = reference(rows)
    got_all = compiled.predict(rows, list(want_all))
    for method, want in want_all.items():
        have = got_all[method]
        if have.shape != want.shape or have.dtype != want.dtype:
            return (f"{method} gives {have.dtype}{list(have.shape)}, the model "
                    f"{want.dtype}{list(want.shape)}")
        if want.dtype.kind in "iub":
            if not np.array_equal(have, want):
                return f"{method} labels differ on {int((have != want).sum())} probe rows"
        elif not np.allclose(have, want, rtol=tolerance.rtol, atol=tolerance.atol,
                             equal_nan=True):
            return f"{method} differs by up to {float(np.nanmax(np.abs(have - want))):.3g}"
    return ""


def largest_difference(compiled: CompiledModel,
                       reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                       rows: np.ndarray) -> float:
    """The largest absolute difference of any non-label output on ``rows`` (for the log)."""
    want_all = reference(rows)
    got_all = compiled.predict(rows, list(want_all))
    diffs = [float(np.nanmax(np.abs(got_all[m].astype(np.float64) - want.astype(np.float64))))
             for m, want in want_all.items() if want.dtype.kind == "f" and want.size]
    return max(diffs, default=0.0)


def probe_rows(n_features: int, dtype: type, scales: Sequence[float], *, rows_per_scale: int = 256,
               missing: bool = False) -> np.ndarray:
    """Rows across several orders of magnitude (and with missing values, when the model
    takes them), plus a row of zeros."""
    rng = np.random.default_rng(0)
    blocks = [np.zeros((1, n_features))] + [rng.normal(0.0, s, (rows_per_scale, n_features))
                                            for s in scales]
    rows = np.concatenate(blocks)
    if missing:
        rows[rng.random(rows.shape) < 0.1] = np.nan
    return rows.astype(dtype)


def spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _spec(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(data["name"], data["datatype"], tuple(data["shape"]))


def _open(path: Path, meta: dict[str, Any]) -> CompiledModel:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    methods = {k: (int(v[0]), None if v[1] is None else int(v[1]))
               for k, v in meta["methods"].items()}
    return CompiledModel(session=session, input_name=session.get_inputs()[0].name,
                         methods=methods, inputs=[_spec(s) for s in meta["inputs"]],
                         outputs=[_spec(s) for s in meta["outputs"]],
                         accepts_non_finite=bool(meta["accepts_non_finite"]))


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"
