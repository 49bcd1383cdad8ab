"""REST V2 (JSON and binary) against a real server process, through tritonclient.http."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
import xgboost as xgb
from tritonclient.utils import InferenceServerException

from runtimes.xgboost_onnx import TOLERANCE as XGB_COMPILED


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _mlp(model_zoo, x: np.ndarray) -> np.ndarray:
    w1, w2 = model_zoo["mlp"]
    logits = np.maximum(x @ w1, 0) @ w2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "turnout"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_is_real(client):
    iris = client.get_model_metadata("iris")
    assert iris["versions"] == ["1", "2"]
    assert iris["platform"] == "sklearn"
    assert iris["inputs"][0]["shape"] == [-1, 4]
    assert {o["name"] for o in iris["outputs"]} == {"predict", "predict_proba"}
    mlp = client.get_model_metadata("mlp")
    assert mlp["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert mlp["outputs"][0]["name"] == "probabilities"
    xgbm = client.get_model_metadata("xgb")
    assert xgbm["inputs"][0]["shape"] == [-1, 32]
    assert client.get_model_metadata("iris", "1")["versions"] == ["1", "2"]


@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("binary", [False, True])
def test_sklearn_predictions_equal_in_process(client, model_zoo, rows, binary):
    x = np.random.default_rng(rows).normal(size=(rows, 4))
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary),
               httpclient.InferRequestedOutput("predict_proba", binary_data=binary)]
    result = client.infer("iris", [_input("input-0", x, "FP64", binary)], outputs=outputs,
                          request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("predict"), model_zoo["iris_v2"].predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               model_zoo["iris_v2"].predict_proba(x), rtol=1e-12)
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "2"


def test_versions_route_to_their_own_model(client, model_zoo):
    x = np.random.default_rng(3).normal(size=(64, 4))
    v1 = client.infer("iris", [_input("input-0", x, "FP64", True)], model_version="1",
                      outputs=[httpclient.InferRequestedOutput("predict_proba")])
    np.testing.assert_allclose(v1.as_numpy("predict_proba"), model_zoo["iris_v1"].predict_proba(x))
    assert v1.get_response()["model_version"] == "1"


@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("binary", [False, True])
def test_xgboost_predictions_equal_in_process(client, model_zoo, rows, binary):
    x = np.random.default_rng(rows).normal(size=(rows, 32)).astype(np.float32)
    result = client.infer("xgb", [_input("input-0", x, "FP32", binary)], outputs=[
        httpclient.InferRequestedOutput("predict_proba", binary_data=binary)])
    expected = model_zoo["xgb"].predict(xgb.DMatrix(x))
    # served by its verified ONNX copy (compile: auto), within the tolerance it was verified to
    np.testing.assert_allclose(result.as_numpy("predict_proba"), expected,
                               rtol=XGB_COMPILED.rtol, atol=XGB_COMPILED.atol)


@pytest.mark.parametrize("rows", [1, 64])
@pytest.mark.parametrize("binary", [False, True])
def test_onnx_predictions_equal_in_process(client, model_zoo, rows, binary):
    x = np.random.default_rng(rows).normal(size=(rows, 8)).astype(np.float32)
    result = client.infer("mlp", [_input("x", x, "FP32", binary)], outputs=[
        httpclient.InferRequestedOutput("probabilities", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), _mlp(model_zoo, x),
                               rtol=1e-4, atol=1e-6)


def test_fp64_data_is_converted_for_an_fp32_model(client, model_zoo):
    x = np.random.default_rng(5).normal(size=(3, 8))
    result = client.infer("mlp", [_input("x", x, "FP64", False)])
    np.testing.assert_allclose(result.as_numpy("probabilities"),
                               _mlp(model_zoo, x.astype(np.float32)), rtol=1e-4, atol=1e-6)


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"\xc3\xa9t\xc3\xa9", b""], [b"xyz", b"1", b"two"]], dtype=object)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is None:
        dtype = np.dtype(datatype.lower().replace("uint", "uint").replace("int", "int"))
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    return np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=dtype)


@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_round_trips(client, model_zoo, binary):
    for datatype in model_zoo["echo_types"]:
        data = _sample(datatype)
        result = client.infer(f"echo_{datatype.lower()}", [_input("x", data, datatype, binary)],
                              outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
        out = result.as_numpy("y")
        assert result.get_output("y")["datatype"] == datatype
        if datatype == "BYTES":
            # tritonclient gives JSON strings back as str and binary ones as bytes
            got = [v.encode() if isinstance(v, str) else bytes(v) for v in out.reshape(-1)]
            assert got == list(data.reshape(-1))
        elif datatype == "FP16" and not binary:
            np.testing.assert_array_equal(out.astype(np.float16), data)
        else:
            np.testing.assert_array_equal(out, data)


def test_unknown_model_is_not_found(client):
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [_input("x", np.zeros((1, 4)), "FP64", False)])
    assert "model 'nope' is not found" in err.value.message()
    assert client.get_model_metadata("iris")["name"] == "iris"


def test_repository_index_and_failed_model(client):
    index = {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index()}
    assert index[("iris", "2")]["state"] == "READY"
    assert index[("broken", "1")]["state"] == "UNAVAILABLE"
    assert "broken" in index[("broken", "1")]["reason"] or index[("broken", "1")]["reason"]
    assert not client.is_model_ready("broken")
    assert client.is_model_ready("iris")
