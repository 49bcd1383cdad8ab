"""XGBoost boosters saved as JSON, UBJSON or the legacy binary format.

Models are always loaded as a plain ``Booster``, whether they were trained with ``xgb.train``
or saved from the scikit-learn wrappers, so serving needs no sklearn. The class label and
probability outputs are rebuilt here the way ``XGBClassifier.predict``/``predict_proba`` build
them, from the objective recorded in the model's own configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from runtimes import compiled, xgboost_onnx
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import describe_outputs, find_artifact
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

xgb = LazyModule("xgboost")
special = LazyModule("scipy.special")

INPUT_NAME = "input-0"
BINARY = frozenset({"binary:logistic", "binary:logitraw"})
MULTICLASS = frozenset({"multi:softprob", "multi:softmax"})


class XGBoostRuntime(compiled.CompilableRuntime):
    name = "xgboost"
    framework = "XGBoost"
    platform = "xgboost"
    artifact_suffixes: ClassVar[tuple[str, ...]] = (".json", ".ubj", ".bst")
    execution = "auto"  # CPU-bound and fast for small models: timed at load

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: xgb.Booster | None = None
        self.objective = ""
        self._linear = False
        self._iterations = (0, 0)

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        self.load_compilable(
            path, load_native=lambda: self._load_booster(path), cached=xgboost_onnx.load_cached,
            compile_native=lambda: xgboost_onnx.compile_verified(
                self.model, path, objective=self.objective, linear=self._linear,
                best_iteration=self._iterations != (0, 0), inputs=self.inputs,
                outputs=self.outputs, cache=not (self.settings.inputs or self.settings.outputs),
                reference=lambda x: self._compute(x, [s.name for s in self.outputs])))

    def _load_booster(self, path: Path) -> None:
        try:
            booster = xgb.Booster(model_file=str(path))
            learner = json.loads(booster.save_config())["learner"]
            n_features = booster.num_features()
        except Exception as exc:
            raise ModelLoadError(f"cannot load XGBoost model {path}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        self.model = booster
        self.objective = learner["objective"]["name"]
        self._linear = learner["gradient_booster"]["name"] == "gblinear"
        # Like the sklearn wrapper: a model trained with early stopping predicts with its best
        # iteration, not every tree it grew (gblinear has no iterations to cut).
        best = booster.attr("best_iteration")
        self._iterations = (0, int(best) + 1) if best is not None and not self._linear else (0, 0)
        self.accepts_non_finite = True  # NaN is XGBoost's missing value

        outputs = describe_outputs(
            path, lambda: self._compute(np.zeros((1, n_features), dtype=np.float32), self._methods()))
        self.declared([TensorSpec(INPUT_NAME, "FP32", (-1, n_features))], outputs)
        self._check_declared(path)

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if self._compiled is not None:
            return self._compiled.predict(inputs[self.inputs[0].name], outputs)
        return self._compute(inputs[self.inputs[0].name], outputs)

    def unload(self) -> None:
        self.model = None
        self._compiled = None

    def _compute(self, features: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Class labels and probabilities as the sklearn wrapper derives them from the booster."""
        if self.objective in BINARY:
            probs = self._raw(features, "value")
            if self.objective == "binary:logitraw":
                probs = special.expit(probs)
            labels = (probs > 0.5).astype(np.int64)
            # One probability column per class, as predict_proba gives; multi-label models
            # already return one column per label.
            proba = np.column_stack((1.0 - probs, probs)) if probs.ndim == 1 else probs
            computed = {"predict": labels, "predict_proba": proba}
        elif self.objective == "multi:softprob":
            proba = self._raw(features, "value")
            computed = {"predict": np.argmax(proba, axis=1), "predict_proba": proba}
        elif self.objective == "multi:softmax":
            # softmax keeps only the winning class; its probabilities come from the margins.
            margins = self._raw(features, "margin")
            computed = {"predict": np.argmax(margins, axis=1),
                        "predict_proba": special.softmax(margins, axis=1)}
        else:
            computed = {"predict": self._raw(features, "value")}
        return {name: computed[name] for name in outputs}

    def _methods(self) -> list[str]:
        if self.objective in BINARY or self.objective in MULTICLASS:
            return ["predict", "predict_proba"]
        return ["predict"]

    def _raw(self, features: np.ndarray, kind: str) -> np.ndarray:
        """Predict with ``inplace_predict``, which skips building a DMatrix and is thread-safe."""
        assert self.model is not None, "predict called before load"
        if self._linear:  # inplace prediction supports tree boosters only
            return self.model.predict(xgb.DMatrix(features), output_margin=kind == "margin",
                                      validate_features=False)
        return self.model.inplace_predict(features, iteration_range=self._iterations,
                                          predict_type=kind, validate_features=False)

    def _check_declared(self, path: Path) -> None:
        """Reject settings overrides that predict() could not honour."""
        if len(self.inputs) != 1:
            raise ModelLoadError(f"{path}: an XGBoost model takes one input, but "
                                 f"{len(self.inputs)} are declared")
        available = self._methods()
        unknown = [spec.name for spec in self.outputs if spec.name not in available]
        if unknown:
            raise ModelLoadError(f"{path}: declared output(s) {unknown} are not produced by "
                                 f"objective {self.objective}; available: {', '.join(available)}")
        names = [spec.name for spec in self.outputs]
        self.default_outputs = [n for n in names if n == "predict"] or names
