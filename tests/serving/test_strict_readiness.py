"""Strict readiness (Triton's default): a replica whose model failed to load is not ready.

Real servers over a repository with one good and one broken model: REST /v2/health/ready,
grpc.health.v1 and ServerReady (tritonclient) agree, liveness stays up, the reason carries
no path, ``--no-strict-readiness`` relaxes it, and repository unload/load move readiness.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def repository(model_zoo: dict, root: Path, *, broken: bool) -> Path:
    shutil.copytree(model_zoo["root"] / "iris" / "1", root / "iris" / "1")
    if broken:
        (root / "broken" / "1").mkdir(parents=True)
        (root / "broken" / "1" / "model.joblib").write_bytes(b"this is not a pickle")
    return root


def health(srv) -> dict[str, int]:
    """grpc.health.v1 status of the whole server ("") and of the inference service."""
    with grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {service: stub.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=10).status
                for service in ("", "inference.GRPCInferenceService")}


def triton_ready(srv) -> tuple[bool, bool, bool]:
    """(server ready, server live, iris ready) as tritonclient's gRPC client sees them."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
    try:
        return client.is_server_ready(), client.is_server_live(), client.is_model_ready("iris")
    finally:
        client.close()


@pytest.mark.parametrize("engine", ["threaded", "aio", "loop"])
def test_broken_model_makes_server_unready(model_zoo, tmp_path, start_server, engine):
    srv = start_server(repository(model_zoo, tmp_path / "repo", broken=True),
                       "--grpc-engine", engine)
    ready = httpx.get(f"{srv.url}/v2/health/ready")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    reason = ready.json()["reason"]
    assert reason == ("model 'broken' version 1 is UNAVAILABLE: cannot load scikit-learn "
                      "model broken/1/model.joblib: IndexError: pop from empty list"), reason
    assert str(tmp_path) not in reason and "/tmp" not in reason
    assert httpx.get(f"{srv.url}/v2/health/live").json() == {"live": True}
    assert health(srv) == {"": NOT_SERVING, "inference.GRPCInferenceService": NOT_SERVING}
    assert triton_ready(srv) == (False, True, True)  # the good model itself is ready
    assert httpclient.InferenceServerClient(srv.url.split("//")[1]).is_server_ready() is False
    # the good model still answers: readiness is about rotation, not refusing requests
    answer = httpx.post(f"{srv.url}/v2/models/iris/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]})
    assert answer.status_code == 200


def test_good_repository_is_ready(model_zoo, tmp_path, start_server):
    srv = start_server(repository(model_zoo, tmp_path / "repo", broken=False))
    ready = httpx.get(f"{srv.url}/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert health(srv) == {"": SERVING, "inference.GRPCInferenceService": SERVING}
    assert triton_ready(srv) == (True, True, True)


def test_relaxed_readiness_keeps_server_ready(model_zoo, tmp_path, start_server):
    srv = start_server(repository(model_zoo, tmp_path / "repo", broken=True),
                       "--no-strict-readiness")
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
    assert health(srv) == {"": SERVING, "inference.GRPCInferenceService": SERVING}
    assert triton_ready(srv) == (True, True, True)
    assert httpx.get(f"{srv.url}/v2/models/broken/ready").status_code == 503  # still its own


def test_environment_variable_relaxes_it(model_zoo, tmp_path):
    srv = ServerProcess(repository(model_zoo, tmp_path / "repo", broken=True), "--grpc-port", "0",
                        env={"TURNOUT_STRICT_READINESS": "false"})
    try:
        assert httpx.get(f"{srv.wait_ready().url}/v2/health/ready").status_code == 200
    finally:
        srv.stop()


def test_unload_and_load_move_readiness(model_zoo, tmp_path, start_server):
    root = repository(model_zoo, tmp_path / "repo", broken=True)
    srv = start_server(root)
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 503
    # unloading the broken model: it no longer counts
    assert httpx.post(f"{srv.url}/v2/repository/models/broken/unload").status_code == 200
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
    assert health(srv)[""] == SERVING
    # loading it again fails (400) and takes the server out again
    load = httpx.post(f"{srv.url}/v2/repository/models/broken/load")
    assert load.status_code == 400 and "failed to load model 'broken'" in load.json()["error"]
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 503
    assert health(srv)[""] == NOT_SERVING
    # repaired on disk and loaded: ready again
    shutil.copy(root / "iris" / "1" / "model.joblib", root / "broken" / "1" / "model.joblib")
    assert httpx.post(f"{srv.url}/v2/repository/models/broken/load").status_code == 200
    assert httpx.get(f"{srv.url}/v2/health/ready").json() == {"ready": True}
    assert health(srv) == {"": SERVING, "inference.GRPCInferenceService": SERVING}
