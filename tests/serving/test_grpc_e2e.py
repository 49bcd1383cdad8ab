"""OIP gRPC against a real server process serving real sklearn / XGBoost / ONNX models.

tritonclient.grpc sends raw contents; typed contents go through Turnout's own messages on a
plain channel; kserve's gRPC client runs in a subprocess (its protos clash with tritonclient's).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import xgboost as xgb
from tritonclient.utils import InferenceServerException

from runtimes.xgboost_onnx import TOLERANCE as XGB_COMPILED
from serving.protocol import proto


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def _mlp(model_zoo, x):
    w1, w2 = model_zoo["mlp"]
    logits = np.maximum(x @ w1, 0) @ w2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _infer(client, model, x, datatype, outputs, **kw):
    tensor = grpcclient.InferInput("input-0", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(o)
                                                  for o in outputs], **kw)


@pytest.mark.parametrize("rows", [1, 64])
def test_raw_contents_equal_in_process(client, model_zoo, rows):
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 4))
    result = _infer(client, "iris", x, "FP64", ["predict", "predict_proba"], request_id="g1")
    np.testing.assert_array_equal(result.as_numpy("predict"), model_zoo["iris_v2"].predict(x))
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               model_zoo["iris_v2"].predict_proba(x), rtol=1e-12)
    assert result.get_response().id == "g1"
    x32 = rng.normal(size=(rows, 32)).astype(np.float32)
    result = _infer(client, "xgb", x32, "FP32", ["predict_proba"])
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               model_zoo["xgb"].predict(xgb.DMatrix(x32)),
                               rtol=XGB_COMPILED.rtol, atol=XGB_COMPILED.atol)  # compile: auto
    x8 = rng.normal(size=(rows, 8)).astype(np.float32)
    result = _infer(client, "mlp", x8, "FP32", ["probabilities"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), _mlp(model_zoo, x8),
                               rtol=1e-4, atol=1e-6)


def test_versions_and_metadata(client, model_zoo):
    x = np.random.default_rng(4).normal(size=(64, 4))
    result = _infer(client, "iris", x, "FP64", ["predict_proba"], model_version="1")
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               model_zoo["iris_v1"].predict_proba(x))
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert client.is_model_ready("iris", "1") and not client.is_model_ready("broken")


@pytest.mark.parametrize("rows", [1, 64])
def test_typed_contents_equal_in_process(server, model_zoo, rows):
    x = np.random.default_rng(rows + 10).normal(size=(rows, 4))
    request = proto.ModelInferRequest(model_name="iris", inputs=[
        proto.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP64", shape=list(x.shape),
            contents=proto.InferTensorContents(fp64_contents=x.ravel().tolist()))],
        outputs=[proto.ModelInferRequest.InferRequestedOutputTensor(name="predict_proba")])
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=proto.ModelInferRequest.SerializeToString,
                                   response_deserializer=proto.ModelInferResponse.FromString)
        response = call(request)
    assert not response.raw_output_contents
    out = response.outputs[0]
    got = np.array(out.contents.fp64_contents).reshape(list(out.shape))
    np.testing.assert_allclose(got, model_zoo["iris_v2"].predict_proba(x), rtol=1e-12)


@pytest.mark.parametrize(("model", "x", "datatype", "code", "message"), [
    ("nope", np.zeros((1, 4)), "FP64", grpc.StatusCode.NOT_FOUND, "model 'nope' is not found"),
    ("iris", np.zeros((1, 3)), "FP64", grpc.StatusCode.INVALID_ARGUMENT,
     "has 3 features but the model expects 4"),
    ("iris", np.array([[b"a", b"b", b"c", b"d"]], dtype=object), "BYTES",
     grpc.StatusCode.INVALID_ARGUMENT, "cannot be converted"),
    ("iris", np.array([[1.0, np.nan, 0, 0]]), "FP64", grpc.StatusCode.INVALID_ARGUMENT,
     "NaN or Inf"),
    ("broken", np.zeros((1, 4)), "FP64", grpc.StatusCode.UNAVAILABLE, "is not ready"),
])
def test_bad_requests(client, model, x, datatype, code, message):
    with pytest.raises(InferenceServerException) as err:
        _infer(client, model, x, datatype, [])
    assert err.value.status() == str(code)
    assert message in err.value.message()
    assert _infer(client, "iris", np.zeros((1, 4)), "FP64", ["predict"]).as_numpy("predict").shape == (1,)


def test_payload_over_the_limit_is_resource_exhausted(client):
    x = np.zeros((40_000, 4))  # 1.28 MB, over the module server's 1 MiB limit
    with pytest.raises(InferenceServerException) as err:
        _infer(client, "iris", x, "FP64", [])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


KSERVE_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def main():
        client = InferenceGRPCClient(sys.argv[1])
        x = np.array(json.loads(sys.argv[2]))
        tensor = InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x)
        response = await client.infer(InferRequest(model_name="iris", infer_inputs=[tensor]))
        print(json.dumps(response.outputs[0].as_numpy().tolist()))
        await client.close()

    asyncio.run(main())
""")


def test_kserve_grpc_client(server, model_zoo):
    x = np.random.default_rng(9).normal(size=(64, 4))
    done = subprocess.run([sys.executable, "-c", KSERVE_SCRIPT, server.grpc_url,
                           json.dumps(x.tolist())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == model_zoo["iris_v2"].predict(x).tolist()


KSERVE_REST_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def main():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        x = np.array(json.loads(sys.argv[2]))
        tensor = InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x, binary_data=False)
        response = await client.infer(sys.argv[1], InferRequest(model_name="iris",
                                                                infer_inputs=[tensor]),
                                      model_name="iris")
        v1 = await InferenceRESTClient(RESTConfig(protocol="v1")).infer(
            sys.argv[1], {"instances": x.tolist()}, model_name="iris")
        print(json.dumps([response.outputs[0].as_numpy().tolist(), v1["predictions"]]))
        await client.close()

    asyncio.run(main())
""")


def test_kserve_rest_client_v2_and_v1(server, model_zoo):
    """kserve's REST client lives with its gRPC protos, so it too runs in a subprocess."""
    x = np.random.default_rng(8).normal(size=(64, 4))
    done = subprocess.run([sys.executable, "-c", KSERVE_REST_SCRIPT, server.url,
                           json.dumps(x.tolist())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    v2, v1 = json.loads(done.stdout)
    expected = model_zoo["iris_v2"].predict(x).tolist()
    assert v2 == expected and v1 == expected


@pytest.mark.parametrize("engine", ["threaded", "aio", "loop"])
def test_every_engine_serves_the_same_answers(model_zoo, start_server, tmp_path, engine):
    """Each --grpc-engine (grpcio's threads, grpc.aio, the event-loop HTTP/2 server) is
    wire-identical for tritonclient."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(model_zoo["root"] / "iris", root / "iris")
    srv = start_server(root, "--grpc-engine", engine)
    aio_client = grpcclient.InferenceServerClient(srv.grpc_url)
    x = np.random.default_rng(12).normal(size=(64, 4))
    result = _infer(aio_client, "iris", x, "FP64", ["predict"])
    np.testing.assert_array_equal(result.as_numpy("predict"), model_zoo["iris_v2"].predict(x))
    with pytest.raises(InferenceServerException) as err:
        _infer(aio_client, "iris", np.zeros((1, 3)), "FP64", [])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert aio_client.is_server_ready()
