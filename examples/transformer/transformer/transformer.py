"""A transformer for the iris classifier: CSV text in, species names out.

Clients send lines such as ``"5.1,3.5,1.4,0.2"`` (a BYTES/str tensor, V1 ``instances`` or V2
``inputs``); ``preprocess`` turns them into the FP32 ``[rows, 4]`` tensor the scikit-learn
predictor takes, the runtime sends it to the predictor (REST or gRPC, per the manifest), and
``postprocess`` maps the class ids the predictor answers to the names in ``labels.txt``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtimes.python import Model

FEATURES = 4


class CsvToIris(Model):
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1], "content_type": "str"}]
    outputs = [{"name": "species", "datatype": "BYTES", "shape": [-1], "content_type": "str"},
               {"name": "class_id", "datatype": "INT64", "shape": [-1]}]

    def load(self) -> None:
        self.labels = (self.folder / "labels.txt").read_text().split()

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        rows = []
        for line in inputs["text"]:
            fields = [f for f in str(line).replace(";", ",").split(",") if f.strip()]
            if len(fields) != FEATURES:
                raise ValueError(f"expected {FEATURES} comma-separated numbers, got "
                                 f"{len(fields)} in {str(line)[:40]!r}")
            rows.append([float(f) for f in fields])  # ValueError names a non-number
        return {"input-0": np.asarray(rows, dtype=np.float32)}

    def postprocess(self, result: dict[str, np.ndarray]) -> dict[str, Any]:
        # REST/gRPC V2 predictors answer "predict"; a V1 predictor answers "predictions"
        ids = np.asarray(result.get("predict", result.get("predictions"))).reshape(-1)
        ids = ids.astype(np.int64)
        return {"species": [self.labels[i] for i in ids], "class_id": ids}
