"""Training components end to end: each framework trains a small model into a folder, one real
``turnout serve`` serves all of them (and their ONNX copies, each folder on its own), and the
served answers must be what the framework computes in this process.

Also: the model-settings.yaml signature is what the server reports as metadata, metrics.json
holds what sklearn.metrics computes independently, and a folder is served as-is by
``turnout serve FOLDER`` (the native artifact, not the ONNX copy beside it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sklearn import metrics

import tests.conftest as SHARED  # the real server process
from serving.protocol.datatypes import dtype_for
from serving.runtime.base import find_artifact, resolve_runtime
from upstream.datasets import load_dataset
from upstream.training import TrainResult, evaluate, predict_in_process, train

# model name -> (framework, dataset, hyperparameters); small and quick on purpose
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sklearn": ("sklearn", "iris", {"estimator": "logistic_regression"}),
    "sklearn_ridge": ("sklearn", "make_regression", {"estimator": "ridge", "alpha": 0.5}),
    "xgboost": ("xgboost", "breast_cancer", {"n_estimators": 20}),
    "lightgbm": ("lightgbm", "wine", {"n_estimators": 20}),
    "torch": ("torch", "iris", {"epochs": 20, "hidden": [16, 8]}),
    "torch_reg": ("torch", "diabetes", {"epochs": 10}),
    "tensorflow": ("tensorflow", "wine", {"epochs": 20}),
    "tensorflow_reg": ("tensorflow", "diabetes", {"epochs": 10}),
}
WITH_ONNX = ["sklearn", "sklearn_ridge", "xgboost", "torch", "torch_reg"]
PLATFORMS = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm",
             "torch": "pytorch_libtorch", "tensorflow": "tensorflow_savedmodel"}
# how far the ONNX copy may be from the native model: float64 for sklearn, float32 otherwise
ONNX_TOLERANCE = {"sklearn": (1e-9, 1e-9), "xgboost": (1e-5, 1e-6), "torch": (1e-5, 1e-5)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("training") / "models"
    results: dict[str, TrainResult] = {}
    for name, (framework, dataset, params) in CASES.items():
        results[name] = train(framework, dataset, root / name, params=params, seed=1,
                              model_name=name)
        if results[name].onnx is not None:  # the ONNX copy as a model folder of its own
            shutil.copytree(root / name / "onnx", root / f"{name}-onnx")
    return {"root": root, "results": results}


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[Any]:
    proc = SHARED.ServerProcess(trained["root"])
    try:
        yield proc.wait_ready(timeout=120)
    finally:
        proc.stop()


def _test_rows(name: str) -> np.ndarray:
    framework, dataset, _ = CASES[name]
    return load_dataset(dataset, seed=1).X_test


def infer(server: Any, model: str, inputs: list[dict], x: np.ndarray,
          outputs: list[str]) -> dict[str, np.ndarray]:
    """A v2 REST request with ``x`` in the declared datatype, every output asked for by name."""
    spec = inputs[0]
    body = {"inputs": [{"name": spec["name"], "shape": list(x.shape),
                        "datatype": spec["datatype"],
                        "data": x.astype(dtype_for(spec["datatype"])).ravel().tolist()}],
            "outputs": [{"name": name} for name in outputs]}
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {out["name"]: np.asarray(out["data"], dtype=dtype_for(out["datatype"]))
            .reshape(out["shape"]) for out in response.json()["outputs"]}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], *, rtol: float,
                atol: float) -> None:
    """Labels exactly, values within rtol/atol, the same outputs with the same shapes."""
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=atol, err_msg=name)


def _settings(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "model-settings.yaml").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_served_predictions_equal_the_framework_in_process(
        server: Any, trained: dict[str, Any], name: str) -> None:
    result: TrainResult = trained["results"][name]
    x = _test_rows(name)
    expected = predict_in_process(result.folder, x)
    got = infer(server, name, result.inputs, x, [o["name"] for o in result.outputs])
    assert_same(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_ONNX)
def test_onnx_copy_served_by_the_onnx_runtime_answers_like_the_model(
        server: Any, trained: dict[str, Any], name: str) -> None:
    result: TrainResult = trained["results"][name]
    assert result.onnx == "onnx/model.onnx" and result.onnx_reason == ""
    assert _settings(result.folder / "onnx")["runtime"] == "onnx"
    x = _test_rows(name)
    expected = predict_in_process(result.folder, x)
    # the same request body as for the native model: names and shapes were aligned
    got = infer(server, f"{name}-onnx", result.inputs, x, [o["name"] for o in result.outputs])
    rtol, atol = ONNX_TOLERANCE[result.framework]
    scale = max(float(np.abs(v).max()) for v in expected.values())
    assert_same(got, expected, rtol=rtol, atol=atol * max(scale, 1.0))


@pytest.mark.slow
@pytest.mark.parametrize("name", [*CASES, *(f"{n}-onnx" for n in WITH_ONNX)])
def test_settings_signature_is_the_served_metadata(server: Any, trained: dict[str, Any],
                                                   name: str) -> None:
    base = name.removesuffix("-onnx")
    result: TrainResult = trained["results"][base]
    folder = result.folder / "onnx" if name.endswith("-onnx") else result.folder
    settings = _settings(folder)
    assert settings["name"] == name
    metadata = httpx.get(f"{server.url}/v2/models/{name}", timeout=10).json()
    platform = "onnxruntime_onnx" if name.endswith("-onnx") else PLATFORMS[result.framework]
    assert metadata["platform"] == platform

    def specs(items: list[dict]) -> list[dict]:
        return [{k: item[k] for k in ("name", "datatype", "shape")} for item in items]

    assert specs(metadata["inputs"]) == settings["inputs"] == result.inputs
    assert specs(metadata["outputs"]) == settings["outputs"] == result.outputs


def independent_metrics(result: TrainResult, dataset: str) -> dict[str, float]:
    """What sklearn.metrics says of the framework's own predictions on the test split."""
    data = load_dataset(dataset, seed=1)
    out = predict_in_process(result.folder, data.X_test)
    if data.task == "regression":
        return {"rmse": float(np.sqrt(metrics.mean_squared_error(data.y_test, out["predict"]))),
                "r2": metrics.r2_score(data.y_test, out["predict"]),
                "mae": metrics.mean_absolute_error(data.y_test, out["predict"])}
    labels, proba = (out["label"], out["predict"]) if result.framework == "lightgbm" else \
        (out["predict"], out["predict_proba"])
    return {"accuracy": metrics.accuracy_score(data.y_test, labels),
            "f1_macro": metrics.f1_score(data.y_test, labels, average="macro"),
            "log_loss": metrics.log_loss(data.y_test, proba.astype(np.float64),
                                         labels=data.classes)}


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 sums
@pytest.mark.parametrize("name", list(CASES))
def test_metrics_json_equals_sklearn_metrics(trained: dict[str, Any], name: str) -> None:
    result: TrainResult = trained["results"][name]
    dataset = CASES[name][1]
    written = json.loads((result.folder / "metrics.json").read_text())
    assert written == result.metrics
    assert written == pytest.approx(independent_metrics(result, dataset), rel=1e-9, abs=1e-12)
    assert evaluate(result.folder, dataset, seed=1) == pytest.approx(written, rel=1e-9)
    task_floor = {"accuracy": 0.8} if "accuracy" in written else {"r2": 0.0}
    for metric, floor in task_floor.items():  # they learned something
        assert written[metric] > floor, written


def test_the_runtime_finds_exactly_the_native_artifact(trained: dict[str, Any]) -> None:
    """What the server's find_artifact picks from each folder as its settings lay it out:
    the native artifact, not metrics.json (which the XGBoost runtime's ``.json`` suffix would
    also take: the settings pin model.json) and not the ONNX copy in its non-numeric folder."""
    for name, result in trained["results"].items():
        settings = _settings(result.folder)
        assert settings["runtime"] == result.framework
        runtime = resolve_runtime(settings["runtime"])
        where = result.folder / settings.get("storage_uri", "")
        assert find_artifact(where, runtime.artifact_suffixes) == result.folder / result.artifact
        assert not any(p.is_dir() and p.name.isdigit() for p in result.folder.iterdir())
        assert (result.folder / "onnx").is_dir() == (name in WITH_ONNX)


def test_no_onnx_copy_says_why(trained: dict[str, Any]) -> None:
    for name, result in trained["results"].items():
        if name not in WITH_ONNX:
            assert result.onnx is None and result.onnx_reason, name


@pytest.mark.slow
def test_turnout_serve_folder_serves_the_native_artifact_and_onnx_alone(
        trained: dict[str, Any]) -> None:
    """``turnout serve FOLDER`` on the trained folder itself (metrics.json and onnx/ inside),
    and on its onnx/ folder alone."""
    result: TrainResult = trained["results"]["xgboost"]
    native = SHARED.ServerProcess(result.folder)
    copy = SHARED.ServerProcess(result.folder / "onnx")
    try:
        native.wait_ready(timeout=60)
        copy.wait_ready(timeout=60)
        x = _test_rows("xgboost")[:16]
        expected = predict_in_process(result.folder, x)
        outputs = [o["name"] for o in result.outputs]
        for proc, model, platform in ((native, "xgboost", "xgboost"),
                                      (copy, "xgboost-onnx", "onnxruntime_onnx")):
            index = httpx.post(f"{proc.url}/v2/repository/index", json={}, timeout=10).json()
            assert [(m["name"], m["state"]) for m in index] == [(model, "READY")]
            metadata = httpx.get(f"{proc.url}/v2/models/{model}", timeout=10).json()
            assert metadata["platform"] == platform
            assert_same(infer(proc, model, result.inputs, x, outputs), expected,
                        rtol=1e-5, atol=1e-6)
    finally:
        native.stop()
        copy.stop()
