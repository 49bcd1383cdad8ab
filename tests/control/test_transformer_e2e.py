"""A transformer under ``turnout up``: one plane (real router, predictor and transformer
processes) serving the example transformer in front of a scikit-learn predictor, reached
through the router over REST V2, REST V1 and gRPC; a canary revision gets its own transformer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.control.planes import Up, isvc
from tests.transformer_support import CLASS, LINES, copy_example, expected

pytestmark = pytest.mark.slow


def service(models: Path, version: str, code: Path, **predictor: object) -> dict:
    doc = isvc("iris", f"file://{models}/{version}", **predictor)
    doc["spec"]["transformer"] = {"turnout": {"modelClass": CLASS, "storageUri": str(code),
                                              "protocol": "grpc-v2"}}
    return doc


@pytest.fixture(scope="module")
def plane(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    folder = tmp_path_factory.mktemp("plane")
    code = copy_example(folder)
    up = Up(folder, service(models, "v1", code))
    up.code = code  # type: ignore[attr-defined]
    try:
        up.wait(lambda: _v2(up, LINES).status_code == 200, timeout=90, what="transformer up")
        yield up
    finally:
        assert up.stop() == 0, (folder / "up.log").read_text()[-3000:]


def _v2(plane: Up, lines: list[str]) -> httpx.Response:
    return httpx.post(f"{plane.url}/v2/models/iris/infer", timeout=30, json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(lines)], "data": lines}]})


def _processes(plane: Up) -> dict[str, list[int]]:
    return json.loads((plane.folder / ".turnout" / "replicas.json").read_text())


def test_the_router_sends_every_protocol_through_the_transformer(plane: Up, models: Path) -> None:
    import tritonclient.grpc as grpcclient

    want = expected(models / "v1", LINES)
    assert len(set(want["species"])) == 3  # the three lines are the three species
    answer = _v2(plane, LINES)
    assert {o["name"]: o["data"] for o in answer.json()["outputs"]} == want

    v1 = httpx.post(f"{plane.url}/v1/models/iris:predict", json={"instances": LINES}, timeout=30)
    assert v1.status_code == 200 and v1.json()["predictions"] == want["species"]

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{plane.grpc_port}")
    text = grpcclient.InferInput("text", [len(LINES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in LINES], dtype=object))
    result = client.infer("iris", [text])
    assert [s.decode() for s in result.as_numpy("species")] == want["species"]
    assert result.as_numpy("class_id").tolist() == want["class_id"]

    processes = _processes(plane)
    assert set(processes) >= {"iris-00001", "iris-00001-transformer", "router"}
    transformer = plane.status()["variants"][0]["transformer"]
    assert {k: transformer[k] for k in ("name", "modelClass", "protocol", "ready", "total")} == {
        "name": "iris-00001-transformer", "modelClass": CLASS, "protocol": "grpc-v2",
        "ready": 1, "total": 1}
    assert "iris-00001-transformer" in plane.cli("status")
    hosts = json.loads((plane.folder / ".turnout" / "transformers" / "iris-00001.json")
                       .read_text())
    assert len(hosts["grpc"]) == 1 and len(hosts["http"]) == 1  # the predictor's one replica


def test_preprocess_errors_reach_the_client_as_invalid_argument(plane: Up) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    answer = _v2(plane, ["5.1,3.5,1.4"])
    assert answer.status_code == 400
    assert answer.json() == {"error": "preprocess refused the input: ValueError: expected 4 "
                                      "comma-separated numbers, got 3 in '5.1,3.5,1.4'"}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{plane.grpc_port}")
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"x,1,2,3"], dtype=object))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [text])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "could not convert string to float: 'x'" in caught.value.message()


def test_a_canary_revision_gets_its_own_transformer_and_promotion_retires_the_old(
        plane: Up, models: Path) -> None:
    code = plane.code  # type: ignore[attr-defined]
    plane.cli("apply", "-f", plane.write("canary.yaml", service(models, "v2", code,
                                                                percent=50)))
    plane.wait(lambda: "iris-00002-transformer" in _processes(plane)
               and len(plane.status()["variants"]) == 2, timeout=90, what="canary up")
    v1, v2 = expected(models / "v1", LINES), expected(models / "v2", LINES)
    seen = set()
    for _ in range(40):
        answer = _v2(plane, LINES)
        assert answer.status_code == 200, answer.text
        seen.add(json.dumps({o["name"]: o["data"] for o in answer.json()["outputs"]}))
    assert seen <= {json.dumps(v1), json.dumps(v2)}, seen
    assert plane.cli("rollout", "promote", "iris")
    plane.wait(lambda: not _processes(plane).get("iris-00001-transformer")
               and not _processes(plane).get("iris-00001"), timeout=60, what="old retired")
    assert {o["name"]: o["data"] for o in _v2(plane, LINES).json()["outputs"]} == v2


def test_a_killed_predictor_answers_503_or_waits_for_its_restart_never_hangs(plane: Up) -> None:
    import os
    import signal
    import time

    revision = plane.status()["stable"]
    (pid,) = _processes(plane)[revision]
    os.kill(pid, signal.SIGKILL)
    codes = []
    for _ in range(5):
        started = time.monotonic()
        answer = _v2(plane, LINES)
        assert time.monotonic() - started < 25  # a restart takes a few seconds; never a hang
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 503:
            assert answer.json()["error"] in ("predictor of 'iris' is unreachable",
                                              "predictor of 'iris' has no ready replica")
        codes.append(answer.status_code)
    plane.wait(lambda: _v2(plane, LINES).status_code == 200, what="predictor restarted")
    assert _processes(plane)[revision] != [pid]
