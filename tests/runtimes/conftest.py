"""Small real models for the runtime tests, built once per session with fixed seeds.

Each model comes as a :class:`ModelCase`: where its artifact lies, which runtime serves it, and
a reference function computing the framework's own in-process output, which is what the
runtime's answers are held to. Test modules import this file only for type checking: pytest
keeps one ``conftest`` module name for every conftest.py, so a runtime import could get another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.model_settings import ModelSettings
from serving.protocol.datatypes import dtype_for
from serving.runtime import Runtime

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]

CONTRACT_CASES = [
    "sklearn_logreg", "sklearn_forest",
    "xgb_booster", "xgb_classifier", "xgb_regressor",
    "onnx_logreg", "onnx_matmul",
]


@dataclass(frozen=True)
class ModelCase:
    runtime: type[Runtime]
    artifact: Path
    n_features: int
    outputs: tuple[str, ...]
    reference: Reference
    model: Any = field(default=None, repr=False)  # the in-process object, for specific checks

    def load(self, artifact: Path | None = None, **settings: Any) -> Runtime:
        runtime = self.runtime(ModelSettings(name="m", artifact=artifact or self.artifact,
                                             **settings))
        runtime.load()
        return runtime

    @staticmethod
    def batch(runtime: Runtime, rows: int, seed: int = 1) -> dict[str, np.ndarray]:
        """What the data plane would hand the runtime: its input cast to the declared datatype.

        Values lie on the scale of the training data (iris measurements lie in 0..8).
        """
        spec = runtime.inputs[0]
        values = np.random.default_rng(seed).uniform(0.0, 8.0, size=(rows, spec.shape[1]))
        return {spec.name: values.astype(dtype_for(spec.datatype))}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime-models")


def _folder(root: Path, name: str) -> Path:
    """One folder per artifact, so each can also be loaded as a version folder."""
    folder = root / name
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y


@pytest.fixture(scope="session")
def regression_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=200, n_features=5, noise=0.1, random_state=0)
    return np.abs(x) * 2, y  # non-negative, like the features() batches


@pytest.fixture(scope="session")
def sklearn_logreg(models_dir: Path, iris: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import joblib
    from sklearn.linear_model import LogisticRegression

    from runtimes.sklearn import SklearnRuntime

    model = LogisticRegression(max_iter=1000).fit(*iris)
    path = _folder(models_dir, "sklearn_logreg") / "model.joblib"
    joblib.dump(model, path)
    return ModelCase(SklearnRuntime, path, 4, ("predict", "predict_proba"),
                     lambda x: {"predict": model.predict(x),
                                "predict_proba": model.predict_proba(x)}, model)


@pytest.fixture(scope="session")
def sklearn_forest(models_dir: Path, regression_data: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import joblib
    from sklearn.ensemble import RandomForestRegressor

    from runtimes.sklearn import SklearnRuntime

    model = RandomForestRegressor(n_estimators=10, max_depth=4, random_state=0)
    model.fit(*regression_data)
    path = _folder(models_dir, "sklearn_forest") / "model.pkl"
    joblib.dump(model, path)
    return ModelCase(SklearnRuntime, path, 5, ("predict",),
                     lambda x: {"predict": model.predict(x)}, model)


@pytest.fixture(scope="session")
def xgb_booster(models_dir: Path, iris: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import xgboost as xgb

    from runtimes.xgboost import XGBoostRuntime

    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "seed": 0,
              "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(iris[0], label=iris[1]), num_boost_round=5)
    path = _folder(models_dir, "xgb_booster") / "model.json"
    booster.save_model(str(path))

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        proba = booster.predict(xgb.DMatrix(x))
        return {"predict": proba.argmax(axis=1), "predict_proba": proba}

    return ModelCase(XGBoostRuntime, path, 4, ("predict", "predict_proba"), reference, booster)


@pytest.fixture(scope="session")
def xgb_classifier(models_dir: Path, iris: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import xgboost as xgb

    from runtimes.xgboost import XGBoostRuntime

    model = xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=0, n_jobs=1)
    model.fit(iris[0], (iris[1] == 2).astype(int))  # binary: virginica or not
    path = _folder(models_dir, "xgb_classifier") / "model.ubj"
    model.save_model(path)
    return ModelCase(XGBoostRuntime, path, 4, ("predict", "predict_proba"),
                     lambda x: {"predict": model.predict(x),
                                "predict_proba": model.predict_proba(x)}, model)


@pytest.fixture(scope="session")
def xgb_regressor(models_dir: Path, regression_data: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import xgboost as xgb

    from runtimes.xgboost import XGBoostRuntime

    model = xgb.XGBRegressor(n_estimators=5, max_depth=3, random_state=0, n_jobs=1)
    model.fit(*regression_data)
    folder = _folder(models_dir, "xgb_regressor")
    model.save_model(folder / "model.json")
    # The case's artifact is the version folder, as a model repository lays it out.
    return ModelCase(XGBoostRuntime, folder, 5, ("predict",),
                     lambda x: {"predict": model.predict(x)}, model)


def _session_reference(path: Path) -> Reference:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    return lambda x: dict(zip(names, session.run(names, {input_name: x}), strict=True))


def logreg_to_onnx(model: Any, n_features: int, **options: Any) -> bytes:
    """Convert a fitted sklearn classifier with skl2onnx at an opset ONNX Runtime supports."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, n_features]))],
                          options={id(model): options} if options else None,
                          target_opset={"": 17, "ai.onnx.ml": 3})
    return onx.SerializeToString()


@pytest.fixture(scope="session")
def onnx_logreg(models_dir: Path, sklearn_logreg: ModelCase) -> ModelCase:
    from runtimes.onnx import OnnxRuntime

    path = _folder(models_dir, "onnx_logreg") / "model.onnx"
    path.write_bytes(logreg_to_onnx(sklearn_logreg.model, 4, zipmap=False))
    return ModelCase(OnnxRuntime, path, 4, ("label", "probabilities"),
                     _session_reference(path), sklearn_logreg.model)


def save_graph(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any],
               initializers: list[Any] | None = None) -> Path:
    """Save a hand-built graph at opset 17 and IR 8, which every recent ONNX Runtime reads."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def graph_saver() -> Callable[..., Path]:
    """:func:`save_graph` for test modules, which cannot import this conftest reliably."""
    return save_graph


@pytest.fixture(scope="session")
def skl2onnx_converter() -> Callable[..., bytes]:
    """:func:`logreg_to_onnx` for test modules."""
    return logreg_to_onnx


@pytest.fixture(scope="session")
def onnx_matmul(models_dir: Path) -> ModelCase:
    from onnx import TensorProto, helper, numpy_helper

    from runtimes.onnx import OnnxRuntime

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 2)).astype(np.float32)
    bias = rng.normal(size=2).astype(np.float32)
    path = save_graph(
        _folder(models_dir, "onnx_matmul") / "model.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    return ModelCase(OnnxRuntime, path, 3, ("y",), _session_reference(path), (weights, bias))


@pytest.fixture(params=CONTRACT_CASES)
def case(request: pytest.FixtureRequest) -> ModelCase:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
