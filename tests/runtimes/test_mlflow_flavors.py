"""MLflow model folders served as MLflow writes them: ``mlflow.<flavor>.save_model`` here, a
real ``turnout serve`` over the folders (no model-settings.yaml), answers held to the model's
own in-process predictions. The layouts that run code (python_function alone, a pickled torch
module, a skops file naming foreign types) and broken MLmodel files are refused with a reason.

Every flavor is saved once per module and served by one server; MLflow is imported only here.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serving.protocol.errors import ModelLoadError
from serving.runtime import mlmodel
from serving.runtime.base import detect_runtime, find_artifact
from serving.runtime.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[2]
try:
    import tests.conftest as SHARED  # the real server process
except ModuleNotFoundError:  # `pytest` run without the repository root on sys.path
    sys.path.insert(0, str(ROOT))
    import tests.conftest as SHARED

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("skops")
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed")
SERVED = ["sk_skops", "sk_cloudpickle", "xgb", "xgb_json", "lgb", "onnx"] \
    + (["torch_pt2", "torch_script"] if HAS_TORCH else []) + (["tf"] if HAS_TF else [])


def _save(flavor: Any, model: Any, path: Path, requirement: str, **kwargs: Any) -> Path:
    # Naming the requirements skips MLflow's inference (a subprocess that loads the model).
    flavor.save_model(model, str(path), pip_requirements=[requirement], **kwargs)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every flavor saved by MLflow into ``root``, with a reference: rows -> outputs."""
    with warnings.catch_warnings():  # MLflow's advice on pickles, deprecations of the savers
        warnings.simplefilter("ignore")
        return _save_all(tmp_path_factory.mktemp("mlflow") / "models")


def _save_all(root: Path) -> dict[str, Any]:
    import lightgbm as lgb
    import onnx
    import onnxruntime as ort
    import xgboost as xgb
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    root.mkdir()
    x, y = load_iris(return_X_y=True)
    refs: dict[str, Any] = {}

    logreg = LogisticRegression(max_iter=500).fit(x, y)
    _save(mlflow.sklearn, logreg, root / "sk_skops", "scikit-learn")  # skops: the default
    refs["sk_skops"] = lambda rows: {"predict": logreg.predict(rows),
                                     "predict_proba": logreg.predict_proba(rows)}
    forest = make_pipeline(StandardScaler(), RandomForestClassifier(
        n_estimators=5, max_depth=3, random_state=0)).fit(x, y)
    _save(mlflow.sklearn, forest, root / "sk_cloudpickle", "scikit-learn",
          serialization_format="cloudpickle", input_example=x[:2])
    refs["sk_cloudpickle"] = lambda rows: {"predict": forest.predict(rows),
                                           "predict_proba": forest.predict_proba(rows)}

    classifier = xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=0, n_jobs=1)
    classifier.fit(x, y)
    _save(mlflow.xgboost, classifier, root / "xgb", "xgboost")  # model.ubj
    refs["xgb"] = lambda rows: {"predict": classifier.predict(rows),
                                "predict_proba": classifier.predict_proba(rows)}
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "seed": 0,
                         "nthread": 1}, xgb.DMatrix(x, label=y == 2), num_boost_round=5)
    # model.json beside input_example.json: only the MLmodel says which file is the model
    _save(mlflow.xgboost, booster, root / "xgb_json", "xgboost", model_format="json",
          input_example=x[:2].astype(np.float32))

    def booster_reference(rows: np.ndarray) -> dict[str, np.ndarray]:
        positive = booster.predict(xgb.DMatrix(rows))
        return {"predict": (positive > 0.5).astype(np.int64),
                "predict_proba": np.column_stack([1 - positive, positive])}

    refs["xgb_json"] = booster_reference

    lgb_booster = lgb.train({"objective": "multiclass", "num_class": 3, "num_leaves": 4,
                             "min_data_in_leaf": 5, "seed": 0, "num_threads": 1,
                             "verbose": -1}, lgb.Dataset(x, y), num_boost_round=5)
    _save(mlflow.lightgbm, lgb_booster, root / "lgb", "lightgbm")  # model.lgb
    refs["lgb"] = lambda rows: {"predict": lgb_booster.predict(rows)}

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    _save(mlflow.onnx, proto, root / "onnx", "onnx")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    refs["onnx"] = lambda rows: {"y": session.run(["y"], {"x": rows.astype(np.float32)})[0]}
    assert onnx.load(str(root / "onnx" / "model.onnx")).graph.name == "g"

    # skops refuses what is not scikit-learn's, NumPy's or SciPy's: here Python's operator.neg
    foreign = make_pipeline(FunctionTransformer(__import__("operator").neg),
                            LogisticRegression(max_iter=500)).fit(x, y)
    # (MLflow records the types it was told to trust in the MLmodel; Turnout ignores that list)
    _save(mlflow.sklearn, foreign, root / "sk_untrusted", "scikit-learn",
          skops_trusted_types=["_operator.neg"])
    # python_function alone: python_model.pkl would pass for an sklearn pickle by its name
    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input

    mlflow.pyfunc.save_model(str(root / "pyfunc_only"), python_model=Echo(),
                             pip_requirements=["mlflow"])
    shutil.copytree(root / "sk_skops", root / "malformed")
    (root / "malformed" / "MLmodel").write_text("flavors:\n  sklearn: {pickled_model: [\n")
    # model-settings.yaml beside the MLmodel still applies
    shutil.copytree(root / "sk_skops", root / "sk_settings")
    (root / "sk_settings" / "model-settings.yaml").write_text(yaml.safe_dump(
        {"outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}]}))

    if HAS_TORCH:
        _save_torch(root, refs, x)
    if HAS_TF:
        _save_tensorflow(root, refs)
    return {"root": root, "refs": refs, "x": x}


def _save_torch(root: Path, refs: dict[str, Any], x: np.ndarray) -> None:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
                                 torch.nn.Softmax(dim=1)).eval()

    def reference(rows: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"output-0": module(torch.from_numpy(rows.astype(np.float32))).numpy()}

    # MLflow 3's default outside Databricks: a torch.export program, data/model.pt2
    _save(mlflow.pytorch, module, root / "torch_pt2", "torch",
          input_example=x[:2].astype(np.float32))
    refs["torch_pt2"] = reference
    _save(mlflow.pytorch, torch.jit.script(module), root / "torch_script", "torch",
          serialization_format="pickle")  # a TorchScript archive in data/model.pth
    refs["torch_script"] = reference
    _save(mlflow.pytorch, module, root / "torch_pickled", "torch",
          serialization_format="pickle")  # torch.save of the module: a pickle


def _save_tensorflow(root: Path, refs: dict[str, Any]) -> None:
    import keras
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((4, 3), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x: Any) -> dict[str, Any]:
            return {"scores": tf.nn.softmax(tf.matmul(x, self.w))}

    scorer = Scorer()
    _save(mlflow.tensorflow, scorer, root / "tf" / "1", "tensorflow")  # a version folder
    refs["tf"] = lambda rows: {"scores": scorer(rows.astype(np.float32))["scores"].numpy()}
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    _save(mlflow.keras, net, root / "keras_file", "keras")  # data/model.keras


@pytest.fixture(scope="module")
def server(saved: dict[str, Any]) -> Iterator[Any]:
    proc = SHARED.ServerProcess(saved["root"])
    try:
        yield proc.wait_ready(timeout=120)
    finally:
        proc.stop()


def _infer(url: str, model: str, rows: np.ndarray,
           outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    meta = httpx.get(f"{url}/v2/models/{model}", timeout=10).json()
    spec = meta["inputs"][0]
    data = rows.astype(np.float32 if spec["datatype"] == "FP32" else np.float64)
    body: dict[str, Any] = {"inputs": [{"name": spec["name"], "datatype": spec["datatype"],
                                        "shape": list(data.shape), "data": data.ravel().tolist()}]}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {out["name"]: np.asarray(out["data"]).reshape(out["shape"])
            for out in response.json()["outputs"]}


def _index(url: str) -> dict[str, dict[str, Any]]:
    entries = httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
    return {entry["name"]: entry for entry in entries}


def test_mlflow_wrote_the_layouts_turnout_reads(saved: dict[str, Any]) -> None:
    root = saved["root"]
    flavors = {name: yaml.safe_load((root / name / "MLmodel").read_text())["flavors"]
               for name in ("sk_skops", "sk_cloudpickle", "xgb", "xgb_json", "lgb", "onnx")}
    assert flavors["sk_skops"]["sklearn"]["pickled_model"] == "model.skops"
    assert flavors["sk_skops"]["sklearn"]["serialization_format"] == "skops"
    assert flavors["sk_cloudpickle"]["sklearn"]["pickled_model"] == "model.pkl"
    assert flavors["xgb"]["xgboost"]["data"] == "model.ubj"
    assert flavors["xgb_json"]["xgboost"]["data"] == "model.json"
    assert (root / "xgb_json" / "input_example.json").is_file()
    assert flavors["lgb"]["lightgbm"]["data"] == "model.lgb"
    assert flavors["onnx"]["onnx"]["data"] == "model.onnx"
    if HAS_TORCH:
        assert (root / "torch_pt2" / "data" / "model.pt2").is_file()
        assert (root / "torch_pickled" / "data" / "model.pth").is_file()
    if HAS_TF:
        assert (root / "tf" / "1" / "tf2model" / "saved_model.pb").is_file()
        assert (root / "keras_file" / "data" / "model.keras").is_file()


@pytest.mark.parametrize("model", SERVED)
def test_served_predictions_equal_the_models_own(server: Any, saved: dict[str, Any],
                                                 model: str) -> None:
    rows = np.random.default_rng(1).uniform(0.0, 8.0, size=(7, 4))
    expected = saved["refs"][model](rows)
    got = _infer(server.url, model, rows, list(expected))
    for name, want in expected.items():
        want = np.asarray(want)
        assert got[name].shape == want.shape, (model, name)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_platforms_come_from_the_flavor(server: Any) -> None:
    platforms = {name: httpx.get(f"{server.url}/v2/models/{name}").json()["platform"]
                 for name in SERVED}
    assert platforms["sk_skops"] == platforms["sk_cloudpickle"] == "sklearn"
    assert platforms["xgb"] == platforms["xgb_json"] == "xgboost"
    assert platforms["lgb"] == "lightgbm"
    assert platforms["onnx"] == "onnxruntime_onnx"
    if HAS_TORCH:
        assert platforms["torch_pt2"] == platforms["torch_script"] == "pytorch_libtorch"
    if HAS_TF:
        assert platforms["tf"] == "tensorflow_savedmodel"


def test_model_settings_beside_the_mlmodel_still_apply(server: Any,
                                                       saved: dict[str, Any]) -> None:
    meta = httpx.get(f"{server.url}/v2/models/sk_settings").json()
    assert [o["name"] for o in meta["outputs"]] == ["predict_proba"]
    rows = saved["x"][:3]
    got = _infer(server.url, "sk_settings", rows)
    np.testing.assert_allclose(got["predict_proba"],
                               saved["refs"]["sk_skops"](rows)["predict_proba"], rtol=1e-6)


def test_unservable_models_are_refused_with_the_reason(server: Any,
                                                      saved: dict[str, Any]) -> None:
    index = _index(server.url)
    untrusted = index["sk_untrusted"]
    assert untrusted["state"] == "UNAVAILABLE"
    assert "_operator.neg" in untrusted["reason"] and "refusing" in untrusted["reason"]

    pyfunc = index["pyfunc_only"]["reason"]
    assert "python_function" in pyfunc and "sklearn" in pyfunc and "onnx" in pyfunc
    if HAS_TORCH:
        pickled = index["torch_pickled"]["reason"]
        assert "pickled torch.nn.Module" in pickled and "serialization_format='pt2'" in pickled
    if HAS_TF:
        assert "Keras file" in index["keras_file"]["reason"]
    for entry in index.values():  # the repository's absolute path never reaches a client
        assert str(saved["root"]) not in entry["reason"] and "Traceback" not in entry["reason"]


def test_a_malformed_mlmodel_is_a_load_failure_with_the_problem(server: Any,
                                                               saved: dict[str, Any]) -> None:
    entry = _index(server.url)["malformed"]
    assert entry["state"] == "UNAVAILABLE"
    assert "not valid YAML" in entry["reason"] and "line" in entry["reason"]
    response = httpx.post(f"{server.url}/v2/repository/models/malformed/load", timeout=30)
    assert 400 <= response.status_code < 500
    assert "not valid YAML" in response.text and "Traceback" not in response.text
    assert str(saved["root"]) not in response.text


@needs_torch
def test_turnout_serve_takes_one_mlflow_folder(saved: dict[str, Any],
                                               start_server: Any) -> None:
    # data/ and MLmodel only at the top: no artifact suffix says it is a model
    folder = saved["root"] / "torch_script"
    proc = start_server(folder)
    assert [e["name"] for e in _index(proc.url).values()] == ["torch_script"]
    rows = saved["x"][:4]
    got = _infer(proc.url, "torch_script", rows)
    np.testing.assert_allclose(got["output-0"], saved["refs"]["torch_script"](rows)["output-0"],
                               rtol=1e-6, atol=1e-7)


def test_the_model_server_never_imports_mlflow_or_skops() -> None:
    code = ("import sys, serving.server, serving.server.repository, serving.runtime.mlmodel, "
            "runtimes.sklearn; "
            "found = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'skops')); "
            "assert not found, found")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# -- the MLmodel reader on its own -------------------------------------------------------------

def _folder(tmp_path: Path, mlmodel_text: str, *files: str) -> Path:
    (tmp_path / "MLmodel").write_text(mlmodel_text)
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_native_flavor_is_preferred_to_python_function(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "flavors:\n  python_function: {data: model.onnx}\n"
                     "  sklearn: {pickled_model: model.pkl}\n  onnx: {data: model.onnx}\n",
                     "model.onnx", "model.pkl")
    found = mlmodel.resolve(folder)
    assert (found.flavor, found.runtime, found.artifact.name) == ("onnx", "onnx", "model.onnx")
    assert found.flavors == ("python_function", "sklearn", "onnx")
    assert detect_runtime(folder) == "onnx"


@pytest.mark.parametrize("data", ["../outside.onnx", "/etc/passwd", ".", "sub/../../x"])
def test_artifacts_outside_the_folder_are_refused(tmp_path: Path, data: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    _folder(folder, yaml.safe_dump({"flavors": {"onnx": {"data": data}}}))
    (tmp_path / "outside.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="outside the model folder|folder itself"):
        mlmodel.resolve(folder)


@pytest.mark.parametrize("text, problem", [
    ("flavors: [1, 2]", "no 'flavors' mapping"),
    ("- just\n- a list", "must hold a mapping"),
    ("flavors:\n  sklearn: 3\n", "must each be a mapping"),
    ("flavors: {sklearn: {pickled_model: model.pkl}", "not valid YAML"),
    ("flavors:\n  sklearn: {pickled_model: missing.pkl}\n", "does not exist"),
    ("flavors:\n  sklearn: {pickled_model: model.bin}\n", "must end in"),
    ("flavors:\n  spacy: {}\n  python_function: {}\n", "it has spacy, python_function"),
])
def test_broken_mlmodel_files_name_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    _folder(tmp_path, text, "model.bin")
    with pytest.raises(ModelLoadError, match=problem):
        mlmodel.resolve(tmp_path)


def test_an_oversized_mlmodel_is_not_parsed(tmp_path: Path) -> None:
    _folder(tmp_path, "flavors: {}\n# " + "x" * mlmodel.MAX_MLMODEL_BYTES)
    with pytest.raises(ModelLoadError, match="larger than"):
        mlmodel.resolve(tmp_path)


def test_the_signature_maps_where_it_maps_cleanly() -> None:
    tensor = {"inputs": '[{"type": "tensor", "tensor-spec": {"dtype": "float32", '
                        '"shape": [-1, 4]}, "name": "x"}]',
              "outputs": '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'}
    inputs, outputs = mlmodel.signature_specs(tensor)
    assert [(s.name, s.datatype, s.shape) for s in inputs] == [("x", "FP32", (-1, 4))]
    assert [(s.name, s.datatype, s.shape) for s in outputs] == [("output-0", "INT64", (-1,))]
    columns = {"inputs": '[{"type": "double", "name": "a"}, {"type": "string", "name": "b"}]'}
    inputs, outputs = mlmodel.signature_specs(columns)
    assert [(s.name, s.datatype, s.shape) for s in inputs] == [("a", "FP64", (-1,)),
                                                               ("b", "BYTES", (-1,))]
    assert outputs == []
    # a column type without a tensor equivalent: no specs rather than some
    assert mlmodel.signature_specs(
        {"inputs": '[{"type": "double", "name": "a"}, {"type": "datetime", "name": "t"}]'}) \
        == ([], [])
    assert mlmodel.signature_specs("not a mapping") == ([], [])


def test_settings_naming_another_runtime_find_its_own_file(tmp_path: Path,
                                                           saved: dict[str, Any]) -> None:
    from runtimes.onnx import OnnxRuntime

    folder = tmp_path / "model"
    shutil.copytree(saved["root"] / "sk_skops", folder)
    shutil.copyfile(saved["root"] / "onnx" / "model.onnx", folder / "model.onnx")
    assert find_artifact(folder, OnnxRuntime.artifact_suffixes).name == "model.onnx"
    runtime = OnnxRuntime(ModelSettings(name="m", artifact=folder, runtime="onnx"))
    runtime.load()
    assert [s.name for s in runtime.outputs] == ["y"]


def test_skops_trusts_only_the_scientific_stack_own_types() -> None:
    from runtimes.sklearn import _skops_trusted

    for name in ("sklearn.tree._tree.Tree", "numpy.dtype", "numpy.mean",
                 "scipy.sparse._csr.csr_matrix",
                 "sklearn.feature_selection._univariate_selection.f_classif"):
        assert _skops_trusted(name), name
    for name in ("_operator.neg", "builtins.eval", "collections.OrderedDict",
                 "lightgbm.basic.Booster", "numpy.load", "numpy.save", "numpy.memmap",
                 "numpy.testing._private.utils.runstring", "numpy.f2py.__main__",
                 "scipy.io.savemat", "sklearn.datasets.fetch_openml",
                 "sklearn.utils.validation.wraps",  # functools.wraps, imported there
                 "numpy.no_such_thing"):
        assert not _skops_trusted(name), name


def test_a_plain_skops_file_is_an_sklearn_model(tmp_path: Path, saved: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from runtimes.sklearn import SklearnRuntime

    shutil.copyfile(saved["root"] / "sk_skops" / "model.skops", tmp_path / "model.skops")
    assert detect_runtime(tmp_path) == "sklearn"
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=tmp_path))
    runtime.load()
    rows = saved["x"][:5]
    np.testing.assert_array_equal(runtime.predict({"input-0": rows}, ["predict"])["predict"],
                                  saved["refs"]["sk_skops"](rows)["predict"])

    monkeypatch.setitem(sys.modules, "skops.io", None)  # as if skops were not installed
    # (compile: none — the verified ONNX copy cached by the first load needs no skops)
    with pytest.raises(ModelLoadError, match=r"needs skops.*turnout\[sklearn\]"):
        SklearnRuntime(ModelSettings(name="m", artifact=tmp_path,
                                     parameters={"compile": "none"})).load()
