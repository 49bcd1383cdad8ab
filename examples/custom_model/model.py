"""A custom Python model: iris species from four measurements, with weights kept in JSON.

Serve it with ``turnout serve examples/custom_model`` (model-settings.yaml names the class) or
``turnout serve examples/custom_model --model-class model:IrisScorer``.
"""

from __future__ import annotations

import json

import numpy as np

from runtimes.python import Model


class IrisScorer(Model):
    # The tensors clients see; model-settings.yaml may declare them instead.
    inputs = [{"name": "measurements", "datatype": "FP64", "shape": [-1, 4]}]
    outputs = [
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
        {"name": "species", "datatype": "BYTES", "shape": [-1], "content_type": "str"},
    ]

    def load(self) -> None:
        """Runs once in a loader thread; the model serves only after it returns."""
        spec = json.loads((self.folder / "weights.json").read_text())
        self.weights = np.asarray(spec["weights"])
        self.bias = np.asarray(spec["bias"])
        self.classes = np.asarray(spec["classes"], dtype=object)
        self.temperature = float(self.parameters.get("temperature", 1.0))

    def preprocess(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return inputs["measurements"]  # already FP64 and shape [rows, 4]: the server checked

    def predict(self, rows: np.ndarray) -> np.ndarray:
        logits = (rows @ self.weights + self.bias) / self.temperature
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def postprocess(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": probabilities,
                "species": self.classes[probabilities.argmax(axis=1)]}
