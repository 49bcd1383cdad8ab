"""scikit-learn estimators pickled with joblib, or saved with skops (``.skops``).

Loading a pickle runs code from the file, so artifacts must come from a trusted repository.
A ``.skops`` file (MLflow's default for scikit-learn) loads with ``skops.io.load``, trusting
only what skops trusts by default plus the types of scikit-learn, NumPy and SciPy that the file
names (never their file, process or test helpers); any other type refuses the model.
Metadata is learned from the fitted estimator itself: the feature count from ``n_features_in_``
and each output's datatype and trailing shape from one prediction on a row of zeros, which is
the only reliable way to know what a third-party estimator or pipeline returns.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtimes import compiled, sklearn_onnx
from serving.protocol.datatypes import datatype_of, dtype_for
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import find_artifact
from serving.runtime.content_types import to_frame
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

joblib = LazyModule("joblib")
sklearn = LazyModule("sklearn")

# skops: types a .skops file may name beyond skops' own defaults come only from these packages,
# and not from their parts that read or write files, build or run code, or fetch data.
SKOPS_TRUSTED_PACKAGES = frozenset({"sklearn", "numpy", "scipy"})
_SKOPS_DENIED_PARTS = frozenset({
    "testing", "_testing", "tests", "conftest", "f2py", "distutils", "ctypeslib", "io",
    "datasets", "externals", "_build_utils", "_datasource", "npyio", "_npyio_impl", "format",
    "_format_impl", "_utils_impl", "_pytesttester", "_distributor_init"})
_SKOPS_DENIED_NAMES = frozenset({
    "load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt",
    "fromfile", "tofile", "fromregex", "dump", "dumps", "memmap", "open_memmap", "DataSource",
    "load_library", "runstring", "exec", "eval", "compile", "system", "popen"})

INPUT_NAME = "input-0"
# Estimator methods served as outputs, in the order they are declared; the first is the default.
METHODS = ("predict", "predict_proba")


class SklearnRuntime(compiled.CompilableRuntime):
    name = "sklearn"
    framework = "scikit-learn"
    platform = "sklearn"
    artifact_suffixes: ClassVar[tuple[str, ...]] = (".joblib", ".pkl", ".skops")
    execution = "auto"  # CPU-bound and fast for small models: timed at load

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: Any = None
        self._feature_names: list[str] | None = None
        self._columns: list[TensorSpec] | None = None  # content_type pd: one input per column

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        self.load_compilable(
            path, load_native=lambda: self._load_estimator(path), cached=sklearn_onnx.load_cached,
            compile_native=lambda: sklearn_onnx.compile_verified(
                self.model, path, self.inputs, self.outputs, self.accepts_non_finite,
                cache=not (self.settings.inputs or self.settings.outputs)))

    def _load_estimator(self, path: Path) -> None:
        if path.name.endswith(".skops"):
            model = _load_skops(path)
        else:
            try:
                model = joblib.load(path)
            except Exception as exc:  # unpickling can raise anything the pickled classes raise
                raise ModelLoadError(f"cannot load scikit-learn model {path}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        if not callable(getattr(model, "predict", None)):
            raise ModelLoadError(f"{path} holds a {type(model).__name__}, not an estimator "
                                 "with a predict method")
        n_features = getattr(model, "n_features_in_", None)
        if not isinstance(n_features, int | np.integer):
            raise ModelLoadError(f"{path}: {type(model).__name__} has no n_features_in_; "
                                 "is it fitted?")
        self.model = model
        names = getattr(model, "feature_names_in_", None)
        self._feature_names = None if names is None else [str(n) for n in names]
        self.accepts_non_finite = _allows_nan(model)

        # content_type pd: each declared input is one DataFrame column (ColumnTransformer).
        self._columns = None
        if self.settings.content_type() == "pd":
            self._columns = self._column_inputs(path)
            probe = {spec.name: (np.full((1,), "", dtype=object) if spec.datatype == "BYTES"
                                 else np.zeros((1,), dtype=dtype_for(spec.datatype)))
                     for spec in self._columns}
            inputs = self._columns
        else:
            probe = {INPUT_NAME: np.zeros((1, int(n_features)), dtype=np.float64)}
            inputs = [TensorSpec(INPUT_NAME, "FP64", (-1, int(n_features)))]
        outputs = [self._probe(path, method, probe) for method in METHODS
                   if hasattr(model, method)]
        self.declared(inputs, outputs)
        self._check_declared(path)

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if self._compiled is not None:
            return self._compiled.predict(next(iter(inputs.values())), outputs)
        features = self._features(inputs)
        # The data plane already refused NaN/Inf for estimators that cannot take them, and
        # parameters were validated at fit time: skipping both checks again saves ~40%.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return {name: _as_output(getattr(self.model, name)(features)) for name in outputs}

    def unload(self) -> None:
        self.model = None
        self._compiled = None

    def _column_inputs(self, path: Path) -> list[TensorSpec]:
        """One input per DataFrame column: as declared, else FP64 per fitted feature name."""
        if self.settings.inputs:
            specs = [spec.to_spec() for spec in self.settings.inputs]
        elif self._feature_names is not None:
            specs = [TensorSpec(name, "FP64", (-1,)) for name in self._feature_names]
        else:
            raise ModelLoadError(f"{path}: content_type pd needs column names: declare the "
                                 "inputs in model-settings.yaml or fit on a DataFrame")
        missing = [n for n in self._feature_names or () if n not in {s.name for s in specs}]
        if missing:
            raise ModelLoadError(f"{path}: the estimator was fitted on columns {missing} that "
                                 "are not declared inputs")
        return specs

    def _features(self, inputs: dict[str, np.ndarray]) -> Any:
        if self._columns is not None:
            return to_frame(inputs, [spec.name for spec in self._columns])
        return self._frame(next(iter(inputs.values())))  # the one input, whatever its name

    def _probe(self, path: Path, method: str, probe: dict[str, np.ndarray]) -> TensorSpec:
        """Declare ``method``'s output from what it returns for one row."""
        try:
            result = _as_output(getattr(self.model, method)(self._features(probe)))
            datatype = datatype_of(result)
        except Exception as exc:
            raise ModelLoadError(f"{path}: {method} fails on a row of zeros, so its output "
                                 f"cannot be described: {type(exc).__name__}: {exc}") from exc
        return TensorSpec(method, datatype, (-1, *result.shape[1:]))

    def _check_declared(self, path: Path) -> None:
        """Reject settings overrides that predict() could not honour."""
        if len(self.inputs) != 1 and self._columns is None:
            raise ModelLoadError(f"{path}: a scikit-learn estimator takes one input, but "
                                 f"{len(self.inputs)} are declared")
        available = [m for m in METHODS if hasattr(self.model, m)]
        unknown = [spec.name for spec in self.outputs if spec.name not in available]
        if unknown:
            raise ModelLoadError(f"{path}: declared output(s) {unknown} are not methods of "
                                 f"{type(self.model).__name__}; available: {', '.join(available)}")
        names = [spec.name for spec in self.outputs]
        self.default_outputs = [n for n in names if n == METHODS[0]] or names

    def _frame(self, features: np.ndarray) -> Any:
        """Give an estimator fitted on a DataFrame its column names back.

        Without them scikit-learn warns on every call, and column-selecting pipelines fail.
        """
        if self._feature_names is None:
            return features
        import pandas as pd  # present whenever an estimator recorded feature names

        return pd.DataFrame(features, columns=self._feature_names, copy=False)


def _load_skops(path: Path) -> Any:
    """A ``.skops`` file whose every type skops trusts or :func:`_skops_trusted` accepts."""
    try:
        sio = importlib.import_module("skops.io")
    except ImportError as exc:
        raise ModelLoadError(f"{path}: loading a .skops file needs skops, which is not installed "
                             f"({exc}); install turnout[sklearn]") from exc
    try:
        named = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip, no schema, a type skops cannot audit
        raise ModelLoadError(f"cannot read skops file {path}: {type(exc).__name__}: "
                             f"{exc}") from exc
    refused = [name for name in named if not _skops_trusted(name)]
    if refused:
        raise ModelLoadError(
            f"{path}: refusing to load: the skops file names types outside scikit-learn, NumPy "
            f"and SciPy (or their file and code helpers), which could run code when loaded: "
            f"{', '.join(refused)}")
    try:
        return sio.load(path, trusted=named)
    except Exception as exc:
        raise ModelLoadError(f"cannot load scikit-learn model {path}: "
                             f"{type(exc).__name__}: {exc}") from exc


def _skops_trusted(name: str) -> bool:
    """Whether a type a skops file names is scikit-learn's, NumPy's or SciPy's own: by its
    name first (no helper that touches files or runs code), then by the object it names,
    whose ``__module__`` must be in those packages too (so no re-exported ``os.system``)."""
    parts = name.split(".")
    if (len(parts) < 2 or parts[0] not in SKOPS_TRUSTED_PACKAGES
            or not all(part.isidentifier() and not part.startswith("__") for part in parts)
            or any(part in _SKOPS_DENIED_PARTS for part in parts[:-1])
            or parts[-1] in _SKOPS_DENIED_NAMES):
        return False
    target = _import_named(parts)
    module = getattr(target, "__module__", None)
    own_name = getattr(target, "__name__", parts[-1])
    return (isinstance(module, str) and module.split(".")[0] in SKOPS_TRUSTED_PACKAGES
            and not any(part in _SKOPS_DENIED_PARTS for part in module.split("."))
            and own_name not in _SKOPS_DENIED_NAMES)


def _import_named(parts: list[str]) -> Any:
    """The object skops would load for a dotted name: the module, then its attribute."""
    try:
        module = importlib.import_module(".".join(parts[:-1]))
    except Exception:  # not a module (ImportError), or one that fails to import
        return None
    return getattr(module, parts[-1], None)


def _as_output(result: Any) -> np.ndarray:
    """Numpy string labels become Python ``str`` objects, which the data plane encodes as BYTES."""
    array = np.asarray(result)
    if array.dtype.kind in ("U", "S"):
        return array.astype(object)
    return array


def _allows_nan(model: Any) -> bool:
    """Ask the estimator's tags (scikit-learn >= 1.6) whether it takes NaN; assume not."""
    try:
        from sklearn.utils import get_tags
    except ImportError:
        return False
    try:
        return bool(get_tags(model).input_tags.allow_nan)
    except Exception:  # third-party estimators with incomplete tags
        return False
