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

from serving.protocol.datatypes import dtype_for
from serving.runtime.base import Runtime
from serving.runtime.settings import ModelSettings

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]

CONTRACT_CASES = [
    "sklearn_logreg", "sklearn_logreg_onnx", "sklearn_forest",
    "xgb_booster", "xgb_booster_onnx", "xgb_classifier", "xgb_regressor", "xgb_regressor_onnx",
    "onnx_logreg", "onnx_matmul",
    "lgbm_booster", "lgbm_regressor", "lgbm_sklearn_joblib",
    "torch_script", "torch_export",
    "tf_savedmodel",
    "python_custom",
]


@dataclass(frozen=True)
class ModelCase:
    runtime: type[Runtime]
    artifact: Path
    n_features: int
    outputs: tuple[str, ...]
    reference: Reference
    model: Any = field(default=None, repr=False)  # the in-process object, for specific checks
    settings: dict[str, Any] = field(default_factory=dict)  # what model-settings.yaml says

    def load(self, artifact: Path | None = None, **settings: Any) -> Runtime:
        runtime = self.runtime(ModelSettings(name="m", artifact=artifact or self.artifact,
                                             **{**self.settings, **settings}))
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


def _compiled_case(models_dir: Path, name: str, case: ModelCase) -> ModelCase:
    """``case``'s model served through its verified ONNX compilation (compile: onnx)."""
    import shutil

    source = case.artifact if case.artifact.is_file() else \
        next(p for p in case.artifact.iterdir() if p.is_file())
    path = _folder(models_dir, name) / source.name
    shutil.copyfile(source, path)
    return ModelCase(case.runtime, path, case.n_features, case.outputs, case.reference,
                     case.model, settings={"parameters": {"compile": "onnx"}})


@pytest.fixture(scope="session")
def sklearn_logreg_onnx(models_dir: Path, sklearn_logreg: ModelCase) -> ModelCase:
    return _compiled_case(models_dir, "sklearn_logreg_onnx", sklearn_logreg)


@pytest.fixture(scope="session")
def xgb_booster_onnx(models_dir: Path, xgb_booster: ModelCase) -> ModelCase:
    return _compiled_case(models_dir, "xgb_booster_onnx", xgb_booster)


@pytest.fixture(scope="session")
def xgb_regressor_onnx(models_dir: Path, xgb_regressor: ModelCase) -> ModelCase:
    return _compiled_case(models_dir, "xgb_regressor_onnx", xgb_regressor)


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


@pytest.fixture(scope="session")
def lgbm_booster(models_dir: Path, iris: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import lightgbm as lgb

    from runtimes.lightgbm import LightGBMRuntime

    params = {"objective": "multiclass", "num_class": 3, "num_leaves": 4, "seed": 0,
              "num_threads": 1, "verbose": -1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(*iris), num_boost_round=5)
    path = _folder(models_dir, "lgbm_booster") / "model.txt"
    booster.save_model(str(path))

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        proba = booster.predict(x)  # what KServe's and MLServer's LightGBM servers answer
        return {"predict": proba, "label": proba.argmax(axis=1)}

    return ModelCase(LightGBMRuntime, path, 4, ("predict", "label"), reference, booster)


@pytest.fixture(scope="session")
def lgbm_regressor(models_dir: Path, regression_data: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    import lightgbm as lgb

    from runtimes.lightgbm import LightGBMRuntime

    model = lgb.LGBMRegressor(n_estimators=5, num_leaves=4, random_state=0, n_jobs=1,
                              verbose=-1).fit(*regression_data)
    folder = _folder(models_dir, "lgbm_regressor")
    model.booster_.save_model(str(folder / "model.txt"))  # the wrapper's booster, as text
    return ModelCase(LightGBMRuntime, folder, 5, ("predict",),
                     lambda x: {"predict": model.predict(x)}, model)


@pytest.fixture(scope="session")
def lgbm_sklearn_joblib(models_dir: Path, iris: tuple[np.ndarray, np.ndarray]) -> ModelCase:
    """The LightGBM sklearn wrapper pickled with joblib goes through the sklearn runtime."""
    import joblib
    import lightgbm as lgb

    from runtimes.sklearn import SklearnRuntime

    model = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, random_state=0, n_jobs=1,
                               verbose=-1).fit(*iris)
    path = _folder(models_dir, "lgbm_sklearn_joblib") / "model.joblib"
    joblib.dump(model, path)
    return ModelCase(SklearnRuntime, path, 4, ("predict", "predict_proba"),
                     lambda x: {"predict": model.predict(x),
                                "predict_proba": model.predict_proba(x)}, model)


def _torch_mlp() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
                               torch.nn.Softmax(dim=1)).eval()


def _torch_reference(module: Any, name: str = "output-0") -> Reference:
    import torch

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {name: module(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()}

    return reference


@pytest.fixture(scope="session")
def torch_script(models_dir: Path) -> ModelCase:
    """TorchScript keeps no input datatypes or shapes: model-settings.yaml declares them."""
    import torch

    from runtimes.torch import TorchRuntime

    module = _torch_mlp()
    path = _folder(models_dir, "torch_script") / "model.pt"
    torch.jit.save(torch.jit.trace(module, torch.zeros(2, 4)), str(path))
    loaded = torch.jit.load(str(path))
    return ModelCase(TorchRuntime, path, 4, ("output-0",), _torch_reference(loaded), loaded,
                     settings={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]})


@pytest.fixture(scope="session")
def torch_export(models_dir: Path) -> ModelCase:
    import torch

    from runtimes.torch import TorchRuntime

    module = _torch_mlp()
    program = torch.export.export(module, (torch.zeros(2, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = _folder(models_dir, "torch_export") / "model.pt2"
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return ModelCase(TorchRuntime, path, 4, ("output-0",), _torch_reference(loaded), loaded)


def make_tf_savedmodel(folder: Path) -> Any:
    """A SavedModel with two signatures: a softmax classifier and a string op."""
    import tensorflow as tf

    class Classifier(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((4, 3), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            logits = tf.matmul(x, self.w)
            return {"probabilities": tf.nn.softmax(logits), "label": tf.argmax(logits, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def shout(self, text: Any) -> dict[str, Any]:
            return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}

    module = Classifier()
    tf.saved_model.save(module, str(folder),
                        signatures={"serving_default": module.serve, "shout": module.shout})
    return tf.saved_model.load(str(folder))


@pytest.fixture(scope="session")
def tf_savedmodel(models_dir: Path) -> ModelCase:
    from runtimes.tensorflow import TensorFlowRuntime

    folder = _folder(models_dir, "tf_savedmodel")
    loaded = make_tf_savedmodel(folder)
    signature = loaded.signatures["serving_default"]

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        out = signature(x=np.asarray(x, dtype=np.float32))
        return {name: tensor.numpy() for name, tensor in out.items()}

    return ModelCase(TensorFlowRuntime, folder, 4, ("label", "probabilities"), reference, loaded)


CUSTOM_MODEL = Path(__file__).resolve().parents[2] / "examples" / "custom_model"


@pytest.fixture(scope="session")
def python_custom() -> ModelCase:
    """The worked example in examples/custom_model, run in-process as the reference."""
    from runtimes.python import PythonRuntime, load_model_class

    settings = {"model_class": "model:IrisScorer", "outputs": [
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}]}
    model = load_model_class("model:IrisScorer", CUSTOM_MODEL)(
        ModelSettings(name="m", artifact=CUSTOM_MODEL))
    model.load()

    def reference(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": model.postprocess(model.predict(x))["probabilities"]}

    return ModelCase(PythonRuntime, CUSTOM_MODEL, 4, ("probabilities",), reference, model,
                     settings=settings)


@pytest.fixture(params=CONTRACT_CASES)
def case(request: pytest.FixtureRequest) -> ModelCase:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


# The python runtime runs a class and reads what it likes, so artifact-file checks skip it.
ARTIFACT_CASES = [name for name in CONTRACT_CASES if name != "python_custom"]


@pytest.fixture(params=ARTIFACT_CASES)
def artifact_case(request: pytest.FixtureRequest) -> ModelCase:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]
