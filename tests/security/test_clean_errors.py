"""Client-visible errors never carry this machine's absolute paths, a model's exception text or
a traceback — on REST and gRPC, from the model server and through the router; the log keeps the
full detail under the request id the client is told."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from hostile_support import RouterProcess, ServerProcess, free_port
from leaky_runtimes import SECRET_DIR

from serving.protocol import proto

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
# An absolute path: a "/" that starts a word and goes on past a second "/".
ABSOLUTE = re.compile(r"(?<![\w.:/-])/[\w.-]+/")


def clean(text: str) -> None:
    assert SECRET_DIR not in text and "Traceback" not in text and "0xdeadbeef" not in text, text
    assert not ABSOLUTE.search(text), text


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("leaky") / "models"
    for name, runtime in (("leaky_load", "LeakyLoad"), ("leaky_predict", "LeakyPredict"),
                          ("abstract", "Abstract")):
        (root / name).mkdir(parents=True)
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump({
            "runtime": f"leaky_runtimes:{runtime}",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    plugins = HERE.parent / "plugins"
    server = ServerProcess(root, env={"PYTHONPATH": os.pathsep.join(
        [str(HERE), str(plugins), os.environ.get("PYTHONPATH", "")])})
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_a_load_failure_reason_keeps_the_model_relative_part_only(leaky: Any) -> None:
    meta = httpx.get(f"{leaky.url}/v2/models/leaky_load").json()
    reason = meta["reason"]
    clean(reason)
    assert "leaky_load/weights.bin" in reason and ".../weights.bin" in reason
    index = httpx.post(f"{leaky.url}/v2/repository/index", json={}).json()
    clean(str(index))
    with grpc.insecure_channel(leaky.grpc_url) as channel:
        metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            metadata(proto.ModelMetadataRequest(name="leaky_load"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    clean(caught.value.details())
    assert f"{SECRET_DIR}/weights.bin" in leaky.log()  # the operator sees it all


def test_a_model_exception_is_a_500_with_the_request_id_and_no_internals(leaky: Any) -> None:
    reply = httpx.post(f"{leaky.url}/v2/models/leaky_predict/infer", json=BODY,
                       headers={"x-request-id": "rid-123"})
    assert reply.status_code == 500
    assert reply.json() == {"error": "model 'leaky_predict' failed during predict (request id "
                                     "rid-123; the server log has the details)"}
    v1 = httpx.post(f"{leaky.url}/v1/models/leaky_predict:predict", json={"instances": [[1, 2]]})
    assert v1.status_code == 500
    clean(v1.text)
    log = leaky.log()
    assert "[rid-123]" in log and "Traceback" in log and "0xdeadbeef" in log


def test_a_model_exception_on_grpc_is_internal_with_a_request_id(leaky: Any) -> None:
    request = proto.ModelInferRequest(model_name="leaky_predict")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1, 2])
    with grpc.insecure_channel(leaky.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            infer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details()
    clean(details)
    rid = re.search(r"request id ([\w-]+);", details)
    assert rid is not None, details
    assert f"(request id {rid.group(1)})" in leaky.log()  # the log line to look for


def test_the_router_names_no_upstream_address(tmp_path: Path, leaky: Any) -> None:
    dead = type("Dead", (), {"url": f"http://127.0.0.1:{free_port()}"})()  # nothing listens
    router = RouterProcess(tmp_path, dead).wait_ready()
    try:
        reply = httpx.post(f"{router.url}/v2/models/m/infer", json=BODY)
    finally:
        router.stop()
    assert reply.status_code == 503
    assert dead.url.removeprefix("http://") not in reply.text, reply.text
    assert "no endpoint of m/default answered" in reply.json()["error"]


def test_a_runtime_class_that_cannot_be_made_is_one_broken_model(leaky: Any) -> None:
    meta = httpx.get(f"{leaky.url}/v2/models/abstract").json()
    assert meta["state"] == "UNAVAILABLE" and meta["reason"].startswith("TypeError: ")
    assert httpx.get(f"{leaky.url}/v2/health/live").status_code == 200  # the server is up


def test_a_100_kb_model_name_is_a_short_not_found_through_the_router(tmp_path: Path,
                                                                     leaky: Any) -> None:
    grpc_port = free_port()
    router = RouterProcess(tmp_path, leaky, "--grpc-port", str(grpc_port)).wait_ready()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as caught:
                infer(proto.ModelInferRequest(model_name="m" * 100_000), timeout=10)
        reply = httpx.post(f"{router.url}/v2/models/{'m' * 8000}/infer", json=BODY)
    finally:
        router.stop()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details().endswith("(cut from 100021 characters)")
    assert len(caught.value.details()) < 1100
    assert reply.status_code == 404 and len(reply.json()["error"]) < 1100
