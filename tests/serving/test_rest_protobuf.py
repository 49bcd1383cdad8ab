"""Protobuf over HTTP: ``POST /v2/models/{m}/infer`` with ``content-type:
application/x-protobuf`` and a serialized ModelInferRequest (how the router forwards gRPC
clients' calls) must answer exactly what the gRPC edge answers for the same message — the same
bytes, or the same error kind and message."""

from __future__ import annotations

import re

import grpc
import httpx
import numpy as np
import pytest

from serving.protocol import proto

PROTOBUF = {"content-type": "application/x-protobuf"}
INFER = "/inference.GRPCInferenceService/ModelInfer"
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE", 500: "INTERNAL"}


@pytest.fixture(scope="module")
def grpc_infer(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield channel.unary_unary(INFER)
    channel.close()


def _message(model: str, x: np.ndarray, datatype: str, *, raw: bool, version: str = "",
             request_id: str = "") -> bytes:
    request = proto.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    if raw:
        request.raw_input_contents.append(x.tobytes())
    elif datatype == "BYTES":
        tensor.contents.bytes_contents.extend(x.ravel().tolist())
    elif datatype == "FP64":
        tensor.contents.fp64_contents.extend(x.ravel().tolist())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    if model.startswith("mlp"):
        request.outputs.add(name="probabilities")
    return request.SerializeToString()


def _post(server, model: str, message: bytes, version: str = "") -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(server.url + path, content=message, headers=PROTOBUF)


CASES = [
    ("mlp", np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8), "FP32", ""),
    ("mlp_batched", np.linspace(-2, 1, 8, dtype=np.float32).reshape(1, 8), "FP32", ""),
    ("xgb", np.linspace(-1, 2, 64, dtype=np.float32).reshape(2, 32), "FP32", ""),
    ("iris", np.asarray([[0.3, -0.2, 1.4, 0.2]]), "FP64", "2"),
    ("echo_bytes", np.asarray([[b"a", b"bc"]], dtype=object), "BYTES", ""),
]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("model,x,datatype,version", CASES, ids=[c[0] for c in CASES])
def test_protobuf_over_http_answers_the_grpc_bytes(server, grpc_infer, model, x, datatype,
                                                    version, raw):
    if raw and datatype == "BYTES":
        from serving.protocol.datatypes import array_to_raw
        message = proto.ModelInferRequest(model_name=model, id="r-1")
        message.inputs.add(name="x", datatype="BYTES", shape=list(x.shape))
        message.raw_input_contents.append(array_to_raw(x))
        body = message.SerializeToString()
    else:
        body = _message(model, x, datatype, raw=raw, version=version, request_id="r-1")
    resp = _post(server, model, body, version)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-protobuf"
    assert resp.content == grpc_infer(body)
    answer = proto.ModelInferResponse.FromString(resp.content)
    assert answer.model_name == model and answer.id == "r-1"
    assert bool(answer.raw_output_contents) == raw


def _without_request_id(message: str) -> str:
    return re.sub(r"request id [^;]+;", "request id ...;", message)


def test_protobuf_errors_are_the_grpc_errors(server, grpc_infer):
    x = np.zeros((1, 3), dtype=np.float32)  # mlp wants 8 features
    cases = [("mlp", _message("mlp", x, "FP32", raw=True)),
             ("nope", _message("nope", x, "FP32", raw=True)),
             ("failing", _message("failing", np.zeros((1, 2), np.float32), "FP32", raw=True))]
    for model, body in cases:
        resp = _post(server, model, body)
        with pytest.raises(grpc.RpcError) as direct:
            grpc_infer(body)
        assert _STATUS[resp.status_code] == direct.value.code().name, model
        # the same message, each naming its own request id (a model failure's)
        assert _without_request_id(resp.json()["error"]) == _without_request_id(
            direct.value.details()), model
    resp = _post(server, "mlp", b"\x0a\xff\xff")  # a truncated field: not a message
    assert resp.status_code == 400 and "malformed ModelInferRequest" in resp.json()["error"]


def test_undecodable_messages_are_invalid_argument_on_both_edges(server, grpc_infer):
    """Bytes that are not a ModelInferRequest (a string field that is not UTF-8): grpcio would
    answer INTERNAL by itself; both edges answer INVALID_ARGUMENT with the reason."""
    inner = b"\x0a\x01x" + b"\x12\x02\xff\xfe"  # input "x" whose datatype is not UTF-8
    message = b"\x0a\x03mlp" + b"\x2a" + bytes([len(inner)]) + inner
    resp = _post(server, "mlp", message)
    with pytest.raises(grpc.RpcError) as direct:
        grpc_infer(message)
    assert resp.status_code == 400 and direct.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert resp.json()["error"] == direct.value.details()
    assert direct.value.details().startswith("malformed ModelInferRequest")
    metadata = grpc.insecure_channel(server.grpc_url).unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata")
    with pytest.raises(grpc.RpcError) as other:  # every RPC, not only ModelInfer
        metadata(b"\x0a\x02\xff\xfe")
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert other.value.details().startswith("malformed ModelMetadataRequest")


def test_protobuf_requests_are_counted_as_their_own_protocol(server):
    def count() -> float:
        for line in httpx.get(f"{server.url}/metrics").text.splitlines():
            if line.startswith("turnout_requests_total{") and 'model="xgb"' in line \
                    and 'protocol="rest-proto"' in line and 'status="success"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    body = _message("xgb", np.ones((1, 32), np.float32), "FP32", raw=True)
    for _ in range(3):
        assert _post(server, "xgb", body).status_code == 200
    assert count() == before + 3
