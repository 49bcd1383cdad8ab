"""Small real numpy models that the gRPC tests load by import path.

``MatMul`` loads a weight matrix from ``weights.npy`` and computes ``x @ W``; its BYTES and
INT64 inputs make one request carry three datatypes, so raw-buffer ordering and typed
contents are exercised together. The other two fail where real models fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime


class MatMul(Runtime):
    """``y = x @ W``, ``label_upper = label.upper()``, ``count_doubled = 2 * count``."""

    name = "test-matmul"
    platform = "numpy"

    def load(self) -> None:
        self.weights = np.load(Path(self.settings.artifact) / "weights.npy")
        features, classes = self.weights.shape
        self.declared(
            [TensorSpec("x", "FP32", (-1, features)), TensorSpec("label", "BYTES", (-1,)),
             TensorSpec("count", "INT64", (-1,))],
            [TensorSpec("y", "FP32", (-1, classes)), TensorSpec("label_upper", "BYTES", (-1,)),
             TensorSpec("count_doubled", "INT64", (-1,))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        compute = {
            "y": lambda: inputs["x"] @ self.weights,
            "label_upper": lambda: np.array([s.upper() for s in inputs["label"]], dtype=object),
            "count_doubled": lambda: inputs["count"] * 2,
        }
        return {name: compute[name]() for name in outputs}


class ExplodesInPredict(Runtime):
    """Loads fine, then raises inside predict as a buggy model would."""

    name = "test-explodes"
    platform = "numpy"

    def load(self) -> None:
        self.declared([TensorSpec("x", "FP32", (-1, 4))], [TensorSpec("y", "FP32", (-1, 3))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise ZeroDivisionError("layer 3 divided by a zero norm")


class CorruptArtifact(Runtime):
    """Fails to load, so the repository keeps it UNAVAILABLE with a reason."""

    name = "test-corrupt"
    platform = "numpy"

    def load(self) -> None:
        np.load(Path(self.settings.artifact) / "weights.npy")  # the file holds no numpy data

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise AssertionError("never loaded, so never asked to predict")
