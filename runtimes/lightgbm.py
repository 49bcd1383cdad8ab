"""LightGBM boosters saved as text (``booster.save_model("model.txt")``).

Models saved from the scikit-learn wrappers (``LGBMClassifier.booster_.save_model``) load the
same way; a wrapper pickled with joblib is an sklearn estimator and goes to the sklearn runtime.
The default output ``predict`` is what ``Booster.predict`` returns, as KServe's and MLServer's
LightGBM servers answer: probabilities for classifiers (``[N]``, the positive class, for binary
objectives; ``[N, K]`` for multiclass ones), raw values otherwise. Classifiers also have
``label``, asked for by name: the class index (argmax) for multiclass, 1 where the probability
is above 0.5 for binary, as ``LGBMClassifier.predict`` decides. Prediction uses one thread
unless ``parameters.num_threads`` says otherwise: the server already runs requests in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime, describe_outputs, find_artifact
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

lgb = LazyModule("lightgbm")

INPUT_NAME = "input-0"
BINARY = frozenset({"binary", "cross_entropy"})
MULTICLASS = frozenset({"multiclass", "multiclassova"})


class LightGBMRuntime(Runtime):
    name = "lightgbm"
    platform = "lightgbm"
    # "model.txt", not ".txt": a README.txt must not make a folder look like a model.
    artifact_suffixes: ClassVar[tuple[str, ...]] = ("model.txt", ".lgb")
    execution = "auto"  # CPU-bound and fast for small models: timed at load

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: Any = None
        self.objective = ""
        self._threads = 1

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        _check_complete(path)
        try:
            booster = lgb.Booster(model_file=str(path))
            objective = str(booster.dump_model(num_iteration=1).get("objective", ""))
            n_features = booster.num_feature()
        except ImportError as exc:
            raise ModelLoadError(f"{path}: lightgbm is not installed ({exc}); install "
                                 "turnout[lightgbm]") from exc
        except Exception as exc:
            raise ModelLoadError(f"cannot load LightGBM model {path}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        threads = self.settings.parameters.get("num_threads", 1)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise ModelLoadError(f"{path}: parameter num_threads must be a whole number >= 0 "
                                 f"(0: LightGBM's default), not {threads!r}")
        self._threads = threads
        self.model = booster
        self.objective = objective.split(" ")[0]  # "multiclass num_class:3" -> "multiclass"
        self.accepts_non_finite = True  # NaN is LightGBM's missing value
        outputs = describe_outputs(
            path, lambda: self._compute(np.zeros((1, n_features)), self._methods()))
        self.declared([TensorSpec(INPUT_NAME, "FP64", (-1, n_features))], outputs)
        self._check_declared(path)

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return self._compute(inputs[self.inputs[0].name], outputs)

    def unload(self) -> None:
        self.model = None

    def _compute(self, features: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """``Booster.predict``'s answer, and the labels ``LGBMClassifier.predict`` derives."""
        assert self.model is not None, "predict called before load"
        values = np.asarray(self.model.predict(features, num_threads=self._threads))
        computed = {"predict": values}
        if "label" in outputs:
            if self.objective in BINARY:  # the wrapper's argmax over (1 - p, p): ties are 0
                computed["label"] = (values > 0.5).astype(np.int64)
            elif self.objective in MULTICLASS:
                computed["label"] = np.argmax(values, axis=1)
        return {name: computed[name] for name in outputs}

    def _methods(self) -> list[str]:
        if self.objective in BINARY or self.objective in MULTICLASS:
            return ["predict", "label"]
        return ["predict"]

    def _check_declared(self, path: Path) -> None:
        if len(self.inputs) != 1:
            raise ModelLoadError(f"{path}: a LightGBM model takes one input, but "
                                 f"{len(self.inputs)} are declared")
        available = self._methods()
        unknown = [spec.name for spec in self.outputs if spec.name not in available]
        if unknown:
            raise ModelLoadError(f"{path}: declared output(s) {unknown} are not produced by "
                                 f"objective {self.objective}; available: {', '.join(available)}")
        names = [spec.name for spec in self.outputs]
        self.default_outputs = [n for n in names if n == "predict"] or names


def _check_complete(path: Path) -> None:
    """LightGBM aborts the whole process on some truncated model files instead of raising, so
    a text model must show its own end before LightGBM parses it."""
    try:
        with path.open("rb") as handle:
            head = handle.read(5)
            handle.seek(0)
            complete = any(b"\nend of trees" in chunk for chunk in _overlapping(handle))
    except OSError as exc:
        raise ModelLoadError(f"cannot read LightGBM model {path}: {exc}") from exc
    if head != b"tree\n":
        raise ModelLoadError(f"{path} is not a LightGBM text model (booster.save_model): it does "
                             "not start with 'tree'")
    if not complete:
        raise ModelLoadError(f"{path} is truncated: it has no 'end of trees' line")


def _overlapping(handle: Any, size: int = 1 << 20) -> Any:
    """Chunks of a file that overlap by a few bytes, so a marker on a boundary is found."""
    tail = b""
    while chunk := handle.read(size):
        yield tail + chunk
        tail = chunk[-16:]
