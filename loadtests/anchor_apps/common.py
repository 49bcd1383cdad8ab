"""What every anchor app shares: loading the harness's artifacts, and the V2 JSON body.

Runs inside an anchor's own venv (numpy and the model frameworks only; nothing of Turnout), so
the apps beside it import it as a sibling module. The apps answer ``POST
/v2/models/<name>/infer`` with the Open Inference Protocol's JSON, the body the harness sends
every server, and ``GET /v2/models/<name>/ready``: the comparison is the server, not the format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
             np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def load(framework: str, path: str) -> Callable[[np.ndarray], np.ndarray]:
    """The cheapest documented predict call of the framework, on one thread."""
    if framework == "sklearn":
        import joblib

        return joblib.load(path).predict
    if framework == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=path)
        booster.set_param({"nthread": 1})
        return booster.inplace_predict
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.astype(np.float32, copy=False)})[0]


@dataclass(frozen=True)
class ModelArg:
    """One ``--model name=framework:DATATYPE:features:path`` argument."""

    name: str
    framework: str
    datatype: str
    n_features: int
    path: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.datatype])

    def load(self) -> Callable[[np.ndarray], np.ndarray]:
        return load(self.framework, self.path)


def parse_specs(specs: list[str]) -> list[ModelArg]:
    out = []
    for spec in specs:
        name, rest = spec.split("=", 1)
        framework, datatype, n_features, path = rest.split(":", 3)
        out.append(ModelArg(name, framework, datatype, int(n_features), path))
    return out


def decode(doc: dict) -> np.ndarray:
    """The first input of a V2 JSON request as an array of its shape and datatype."""
    tensor = doc["inputs"][0]
    return np.asarray(tensor["data"], dtype=DTYPES[tensor["datatype"]]).reshape(tensor["shape"])


def encode(name: str, y: np.ndarray) -> dict:
    y = np.asarray(y)
    return {"model_name": name, "outputs": [{
        "name": "output-0", "shape": list(y.shape), "datatype": DATATYPES[y.dtype],
        "data": y.ravel().tolist()}]}
