"""Every client mistake over REST: the status, the message, and that the server keeps serving."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import orjson
import pytest


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}


def _still_serving(http) -> None:
    response = http.post("/v2/models/iris/infer", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["name"] == "predict"


def _infer(http, body, model="iris", headers=None):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return http.post(f"/v2/models/{model}/infer", content=content, headers=headers or {})


def _tensor(**overrides):
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}
    tensor.update(overrides)
    return {"inputs": [{k: v for k, v in tensor.items() if v is not None}]}


CASES = [
    ("malformed json", b'{"inputs": [', "iris", 400, "malformed JSON"),
    ("not an object", b"[1, 2]", "iris", 400, "must be a JSON object"),
    ("no inputs", {"id": "1"}, "iris", 400, "needs an 'inputs' list"),
    ("empty inputs", {"inputs": []}, "iris", 400, "request has no inputs"),
    ("missing name", _tensor(name=None), "iris", 400, "needs a 'name' string"),
    ("missing datatype", _tensor(datatype=None), "iris", 400, "needs a 'datatype' string"),
    ("missing shape", _tensor(shape=None), "iris", 400, "needs a 'shape' list"),
    ("negative shape", _tensor(shape=[-1, 4]), "iris", 400, "non-negative integers"),
    ("missing data", _tensor(data=None), "iris", 400, "neither 'data' nor a binary_data_size"),
    ("datatype outside the protocol", _tensor(datatype="FP8"), "iris", 400,
     "unsupported datatype 'FP8'"),
    ("bytes to a numeric model", _tensor(datatype="BYTES", data=["a", "b", "c", "d"]), "iris", 400,
     "datatype BYTES, which cannot be converted to the model's FP64"),
    ("strings in numeric data", _tensor(data=["a", "b", "c", "d"]), "iris", 400,
     "FP64 data must be numbers, got strings"),
    ("floats to an integer input", _tensor(datatype="INT64", data=[1.5, 2, 3, 4]), "echo_int64",
     400, "INT64 data must be numbers, got floating-point"),
    ("length does not match shape", _tensor(data=[1, 2, 3]), "iris", 400,
     "3 data elements do not match shape [1, 4] (4 expected)"),
    ("ragged nested data", _tensor(shape=[2, 2], data=[[1, 2], [3]]), "iris", 400, "ragged"),
    ("wrong feature count", _tensor(shape=[1, 3], data=[1, 2, 3]), "iris", 400,
     "has 3 features but the model expects 4"),
    ("wrong rank", _tensor(shape=[4], data=[1, 2, 3, 4]), "iris", 400, "has shape [4]"),
    ("empty batch", _tensor(shape=[0, 4], data=[]), "iris", 400, "empty batch"),
    ("unknown model", GOOD, "nope", 404, "model 'nope' is not found"),
    ("unknown output", {**GOOD, "outputs": [{"name": "logits"}]}, "iris", 400,
     "unknown output 'logits'"),
    ("model that failed to load", GOOD, "broken", 503, "is not ready"),
]


@pytest.mark.parametrize(("body", "model", "status", "message"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_a_clear_4xx(http, body, model, status, message):
    response = _infer(http, body, model)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "Traceback" not in response.text
    _still_serving(http)


def test_unknown_version_is_not_found(http):
    response = http.post("/v2/models/iris/versions/9/infer", json=GOOD)
    assert response.status_code == 404
    assert response.json()["error"] == "model 'iris' has no version '9'; versions: 1, 2"
    assert http.get("/v2/models/iris/versions/9").status_code == 404
    _still_serving(http)


def _binary(tensors: list[tuple[str, np.ndarray, str]], sizes: list[int] | None = None,
            extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    raws = [a.tobytes() for _, a, _ in tensors]
    header = orjson.dumps({"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": d,
         "parameters": {"binary_data_size": (sizes[i] if sizes else len(raws[i]))}}
        for i, (n, a, d) in enumerate(tensors)]})
    return header + b"".join(raws) + extra, {"Inference-Header-Content-Length": str(len(header))}


def test_binary_request_succeeds(http, model_zoo):
    x = np.random.default_rng(1).normal(size=(5, 4))
    body, headers = _binary([("x", x, "FP64")])
    response = _infer(http, body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == model_zoo["iris_v2"].predict(x).tolist()


@pytest.mark.parametrize(("sizes", "extra", "message"), [
    ([31], b"", "raw data do not match shape"),
    ([64], b"", "runs past the end of the body"),
    (None, b"\0\0\0\0", "binary data sizes add up to 32 bytes but the body carries 36"),
])
def test_binary_sizes_that_do_not_add_up(http, sizes, extra, message):
    body, headers = _binary([("x", np.zeros((1, 4)), "FP64")], sizes, extra)
    response = _infer(http, body, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["error"]
    _still_serving(http)


def test_header_length_past_the_body(http):
    response = _infer(http, orjson.dumps(GOOD), headers={"Inference-Header-Content-Length": "9999"})
    assert response.status_code == 400
    assert "does not fit a body" in response.json()["error"]


def test_nan_where_the_model_cannot_take_it(http):
    x = np.array([[1.0, np.nan, 3.0, np.inf]])
    body, headers = _binary([("x", x, "FP64")])
    response = _infer(http, body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "input 'x' contains NaN or Inf, which model 'iris' cannot take"
    _still_serving(http)


def test_nan_passes_where_the_model_takes_it(http):
    x = np.full((1, 32), np.nan, dtype=np.float32)
    body, headers = _binary([("x", x, "FP32")])
    assert _infer(http, body, "xgb", headers=headers).status_code == 200


def test_bytes_tensor_truncated(http):
    raw = struct.pack("<I", 10) + b"abc"
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(raw)}}]})
    response = _infer(http, header + raw, "echo_bytes",
                      headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert "truncated" in response.json()["error"]


def test_payload_over_the_limit(http):
    big = b'{"inputs": [' + b" " * (2 << 20) + b"]}"
    response = _infer(http, big)
    assert response.status_code == 413
    assert "exceeds the 1048576-byte limit" in response.json()["error"]
    _still_serving(http)


def test_chunked_payload_over_the_limit(http):
    def chunks():
        yield b'{"inputs": ['
        for _ in range(40):
            yield b" " * 65536
        yield b"]}"
    response = http.post("/v2/models/iris/infer", content=chunks())
    assert response.status_code == 413
    _still_serving(http)


def test_model_that_raises_is_a_clean_500(http):
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    response = _infer(http, body, "failing", headers={"x-request-id": "t-1"})
    assert response.status_code == 500  # the exception's own text goes to the log only
    assert response.json() == {"error": "model 'failing' failed during predict (request id "
                                        "t-1; the server log has the details)"}
    _still_serving(http)


def test_unknown_fields_and_parameters_are_ignored(http):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4],
                        "parameters": {"content_type": "np", "whatever": 1}, "extra": True}],
            "parameters": {"custom": "x"}, "unknown_top": [1]}
    assert _infer(http, body).status_code == 200


def test_json_without_content_type(http):
    response = http.post("/v2/models/iris/infer", content=orjson.dumps(GOOD),
                         headers={"content-type": ""})
    assert response.status_code == 200


def test_unknown_route_is_json_404(http):
    response = http.get("/v2/nothing/here")
    assert response.status_code == 404
    assert "error" in response.json()


V1_CASES = [
    ("no instances", {"foo": 1}, 400, "needs 'instances' or 'inputs'"),
    ("empty", {"instances": []}, 400, "empty batch"),
    ("ragged", {"instances": [[1, 2, 3, 4], [1]]}, 400, "ragged"),
    ("wrong features", {"instances": [[1, 2, 3]]}, 400, "has 3 features but the model expects 4"),
    ("objects", {"instances": [{"a": 1}]}, 400, "must hold numbers"),
]


@pytest.mark.parametrize(("body", "status", "message"), [c[1:] for c in V1_CASES],
                         ids=[c[0] for c in V1_CASES])
def test_v1_bad_requests(http, body, status, message):
    response = http.post("/v1/models/iris:predict", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _still_serving(http)


def test_v1_predict_equals_in_process(http, model_zoo):
    x = np.random.default_rng(2).normal(size=(64, 4))
    for key in ("instances", "inputs"):
        response = http.post("/v1/models/iris:predict", json={key: x.tolist()})
        assert response.status_code == 200
        assert response.json()["predictions"] == model_zoo["iris_v2"].predict(x).tolist()
    meta = http.get("/v1/models/iris").json()
    assert meta == {"name": "iris", "ready": True}
    assert http.get("/v1/models/nope").status_code == 404


def test_v1_list_models_names_every_model_served(http, model_zoo):
    response = http.get("/v1/models")
    assert response.status_code == 200
    # every model folder of the zoo, including the one that failed to load, as KServe's V1
    # server lists every model it holds; each one answers /v1/models/{m}
    names = sorted(p.name for p in model_zoo["root"].iterdir() if p.is_dir())
    assert response.json() == {"models": names}
    assert "broken" in names and "iris" in names
    for name in names:
        reply = http.get(f"/v1/models/{name}")
        assert reply.json()["ready"] is (name != "broken")
        assert reply.status_code == (200 if name != "broken" else 503)  # KServe: not ready


def test_v1_liveness_at_the_root(http):
    reply = http.get("/")
    assert (reply.status_code, reply.json()) == (200, {"status": "alive"})
    refused = http.post("/v1/models", json={})
    assert refused.status_code == 405
    assert "error" in refused.json()


def test_request_id_header_is_echoed(http):
    response = http.post("/v2/models/iris/infer", json=GOOD, headers={"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"


def test_output_content_type_is_encoded_and_reported(http, model_zoo):
    x = np.random.default_rng(6).normal(size=(3, 4))
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64",
                        "data": x.ravel().tolist()}],
            "outputs": [{"name": "predict", "parameters": {"content_type": "str"}}]}
    response = http.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["parameters"] == {"content_type": "str"}
    assert out["data"] == [str(v) for v in model_zoo["iris_v2"].predict(x)]
    body["outputs"][0]["parameters"]["content_type"] = "yaml"
    bad = http.post("/v2/models/iris/infer", json=body)
    assert bad.status_code == 400
    assert "unknown content_type 'yaml'" in bad.json()["error"]


def test_load_shedding_answers_carry_retry_after():
    from serving.protocol.errors import ModelNotFound, Overloaded
    from serving.server.rest.app import error_response
    from serving.server.rest.infer import _failure

    shed = error_response(Overloaded("batching queue is full"))
    assert (shed.status_code, shed.headers["retry-after"]) == (429, "1")
    assert "retry-after" not in error_response(ModelNotFound("no")).headers
    status, _, headers = _failure(Overloaded("full"), ("v2", "iris", None))
    assert status == 429 and (b"retry-after", b"1") in headers
