"""``turnout up`` over its lifetime: a restart in the middle of a progressive rollout resumes it,
refused manifests change nothing, services and graphs are deleted, and models come from http(s)
and S3 storage URIs. Real processes on loopback, so these tests are marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import yaml

from tests.conftest import free_port
from tests.control.planes import ROW, Up, isvc

pytestmark = pytest.mark.slow

# The interval is the margin between seeing the 50% step and the stop taking effect: with
# 1 s a slow CI machine's stop let the next interval promote first (saved percent 0).
ROLLOUT = {"rollout": {"steps": [20, 50, 100], "interval": "4s",
                       "analysis": {"minRequests": 5, "maxHolds": 1000, "maxP99Ratio": None}}}


def _traffic(plane: Up, until: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < deadline:
            for _ in range(20):
                assert http.post(f"{plane.url}/v2/models/iris/infer", json=ROW).status_code == 200
            if until(plane.status()):
                return
    raise TimeoutError(f"{what}: {plane.status()}")


def test_a_restart_mid_rollout_resumes_at_the_same_step(models: Path, tmp_path: Path,
                                                        up: list[Up]) -> None:
    docs = (isvc("iris", f"file://{models}/v1"),
            isvc("iris", f"file://{models}/v2", turnout=ROLLOUT))
    plane = Up(tmp_path, *docs)
    up.append(plane)
    plane.wait(lambda: plane.variant("canary")["replicas"]["ready"] == 1, what="canary up")
    _traffic(plane, lambda s: s["canary_percent"] == 50, "second step")
    before = plane.status()
    assert plane.stop() == 0
    up.remove(plane)
    saved = json.loads((tmp_path / ".turnout" / "state.json").read_text())
    assert saved["format"] == 1
    assert saved["services"]["iris"]["state"]["percent"] == 50

    again = Up(tmp_path, *docs)
    up.append(again)
    again.wait(lambda: again.status()["phase"] == "progressing", what="restored")
    after = again.status()
    assert (after["stable"], after["canary"], after["canary_percent"]) == (
        before["stable"], before["canary"], 50)
    assert before["events"][-1] in after["events"]  # the history came back too
    again.wait(lambda: again.variant("canary")["replicas"]["ready"] == 1, what="replicas again")
    _traffic(again, lambda s: s["canary"] is None, "promotion after the restart")
    assert again.status()["stable"] == before["canary"]


@pytest.mark.parametrize("content, why", [
    ("{not json", "not JSON"),
    (json.dumps({"format": 99, "services": {}, "graphs": {}}), "newer Turnout"),
    (json.dumps({"format": 1, "services": {"x": {"state": {}}}, "graphs": {}}), "unreadable"),
])
def test_a_state_file_that_cannot_be_used_is_an_error_naming_it(tmp_path: Path, content: str,
                                                                why: str) -> None:
    (tmp_path / ".turnout").mkdir()
    (tmp_path / ".turnout" / "state.json").write_text(content)
    (tmp_path / "m.yaml").write_text(json.dumps(isvc("iris", "m")))
    (tmp_path / "m").mkdir()
    done = subprocess.run([sys.executable, "-m", "serving.cli", "up", "-f", "m.yaml",
                           "--http-port", str(free_port()), "--grpc-port", str(free_port())],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert str(tmp_path / ".turnout" / "state.json") in done.stderr and why in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / ".turnout" / "state.json").read_text() == content  # never reset


def _graph(name: str, steps: list[dict]) -> dict:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
            "metadata": {"name": name},
            "spec": {"nodes": {"root": {"routerType": "Switch", "steps": steps}}}}


def test_refused_manifests_change_nothing_and_deletes_drain(models: Path, tmp_path: Path,
                                                            up: list[Up]) -> None:
    plane = Up(tmp_path, isvc("iris", f"file://{models}/v1"))
    up.append(plane)
    plane.wait(lambda: plane.infer() == 200, what="serving")
    saved = (tmp_path / ".turnout" / "state.json").read_text()

    # A Switch step without a condition before the last: the router would refuse the graph.
    bad = _graph("pick", [{"serviceName": "iris"}, {"serviceName": "iris",
                                                     "condition": "instances.#(0>5)"}])
    wrong = isvc("other", f"file://{models}/v2")
    wrong["spec"]["predictor"]["model"]["modelFormat"]["name"] = "xgboost"
    error = plane.cli_fails("apply", "-f", plane.write("bad.yaml", bad, wrong,
                                                       isvc("third", "file:///no/such/model")))
    assert "InferenceGraph pick: spec." in error
    assert "InferenceService other: spec.predictor.model.storageUri" in error and \
        "holds a sklearn model" in error
    assert "InferenceService third: spec.predictor.model.storageUri" in error
    assert plane.infer() == 200 and plane.status()["name"] == "iris"
    assert json.loads(plane.cli("status", "-o", "json"))["graphs"] == []
    assert (tmp_path / ".turnout" / "state.json").read_text() == saved

    good = _graph("pick", [{"serviceName": "other", "condition": "instances.#(0>6)"},
                           {"serviceName": "iris"}])
    plane.cli("apply", "-f", plane.write("good.yaml", isvc("other", f"file://{models}/v2"), good))
    plane.wait(lambda: httpx.post(f"{plane.url}/v1/models/other:predict",
                                  json={"instances": [[6.7, 3.0, 5.2, 2.3]]}).status_code == 200,
               what="other serving")
    assert "InferenceGraph pick" in plane.cli_fails("delete", "other")  # the graph needs it
    pids = json.loads((tmp_path / ".turnout" / "replicas.json").read_text())["other-00001"]
    assert "deleted InferenceGraph pick" in plane.cli("delete", "-f", "good.yaml")
    plane.wait(lambda: httpx.post(f"{plane.url}/v1/models/other:predict",
                                  json={"instances": [[6.7, 3.0, 5.2, 2.3]]}).status_code == 404,
               what="other gone")
    status = json.loads(plane.cli("status", "-o", "json"))
    assert [s["name"] for s in status["services"]] == ["iris"] and status["graphs"] == []
    plane.wait(lambda: not _alive(pids[0]), what="other's replica stopped")
    assert "not found: InferenceService nope" in plane.cli_fails("delete", "nope")
    assert plane.infer() == 200


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and \
        "zombie" not in Path(f"/proc/{pid}/status").read_text()


class _Counting(SimpleHTTPRequestHandler):
    gets: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Counting.gets[self.path] = _Counting.gets.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def remote_model(tmp_path: Path, models: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """The v2 model on a loopback web server and in moto's S3: (http URI, s3 URI, env)."""
    import boto3
    from moto.server import ThreadedMotoServer

    docroot = tmp_path / "www"
    (docroot / "iris").mkdir(parents=True)
    (docroot / "iris" / "model.joblib").write_bytes((models / "v2" / "model.joblib").read_bytes())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Counting, directory=str(docroot)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "TURNOUT_MODEL_CACHE": str(tmp_path / "cache")}
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    s3.upload_file(str(models / "v2" / "model.joblib"), "models", "iris/v2/model.joblib")
    try:
        yield (f"http://127.0.0.1:{httpd.server_address[1]}/iris/model.joblib",
               "s3://models/iris/v2/", env)
    finally:
        httpd.shutdown()
        httpd.server_close()
        moto.stop()


def test_models_from_http_and_s3_storage_uris(models: Path, tmp_path: Path, up: list[Up],
                                              remote_model: tuple[str, str, dict[str, str]]
                                              ) -> None:
    http_uri, s3_uri, env = remote_model
    docs = (isvc("web", http_uri, minReplicas=2, maxReplicas=2), isvc("bucket", s3_uri))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(docs))
    refused = subprocess.run([sys.executable, "-m", "serving.cli", "up", "-f", "m.yaml",
                              "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                              "--trusted-source", http_uri],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # sklearn models are pickles: the untrusted bucket is refused before anything starts
    assert refused.returncode == 2 and "InferenceService bucket" in refused.stderr
    assert "--trusted-source" in refused.stderr and "InferenceService web" not in refused.stderr
    plane = Up(tmp_path, *docs, env=env,
               args=("--trusted-source", http_uri, "--trusted-source", "s3://models/"))
    up.append(plane)
    plane.wait(lambda: plane.variant("stable", "web")["replicas"]["ready"] == 2
               and plane.variant("stable", "bucket")["replicas"]["ready"] == 1,
               timeout=120, what="remote models up")
    estimator = joblib.load(models / "v2" / "model.joblib")
    x = np.array([[6.7, 3.0, 5.2, 2.3], [5.1, 3.5, 1.4, 0.2]])
    for name in ("web", "bucket"):
        reply = httpx.post(f"{plane.url}/v1/models/{name}:predict", json={"instances": x.tolist()})
        assert reply.status_code == 200, reply.text
        assert reply.json()["predictions"] == estimator.predict(x).tolist()
    # the revision records the URI it was given; both replicas shared one download
    assert plane.variant("stable", "web")["storageUri"] == http_uri
    assert _Counting.gets["/iris/model.joblib"] == 1
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 2


def test_a_killed_plane_takes_its_processes_along_and_the_next_up_starts_clean(
        models: Path, tmp_path: Path, up: list[Up]) -> None:
    import os
    import signal

    plane = Up(tmp_path, isvc("iris", f"file://{models}/v1"))
    plane.wait(lambda: plane.infer() == 200, what="serving")
    children = [p for group in json.loads((tmp_path / ".turnout" / "replicas.json").read_text())
                .values() for p in group]
    assert len(children) == 2  # one replica and the router
    os.kill(plane.proc.pid, signal.SIGKILL)
    plane.proc.wait(10)
    plane.log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    assert not any(_alive(p) for p in children)  # the kernel told them their parent died

    again = Up(tmp_path, isvc("iris", f"file://{models}/v1"))  # new ports, same state folder
    up.append(again)
    again.wait(lambda: again.infer() == 200, what="serving again")
    assert again.status()["stable"] == "iris-00001"
    assert "did not stop cleanly" in (tmp_path / "up.log").read_text()


def test_a_second_plane_on_a_running_state_folder_is_refused(models: Path, tmp_path: Path,
                                                            up: list[Up]) -> None:
    plane = Up(tmp_path, isvc("iris", f"file://{models}/v1"))
    up.append(plane)
    plane.wait(lambda: plane.infer() == 200, what="serving")
    done = subprocess.run([sys.executable, "-m", "serving.cli", "up", "-f", "manifest.yaml",
                           "--http-port", str(free_port()), "--grpc-port", str(free_port())],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "already running" in done.stderr
    assert plane.infer() == 200


def test_the_admin_api_needs_the_planes_token(models: Path, tmp_path: Path, up: list[Up]) -> None:
    plane = Up(tmp_path, isvc("iris", f"file://{models}/v1"))
    up.append(plane)
    plane.wait(lambda: plane.infer() == 200, what="serving")
    admin = json.loads((tmp_path / ".turnout" / "plane.json").read_text())["admin"]
    secret_file = tmp_path / ".turnout" / "admin-token"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text()
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": secret}):
        refused = httpx.post(f"{admin}/shutdown", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "admin-token" in refused.json()["error"]
    ok = httpx.get(f"{admin}/status", headers={"authorization": f"Bearer {secret}"})
    assert ok.status_code == 200 and ok.json()["services"][0]["name"] == "iris"
    assert httpx.get(f"{admin}/metrics").status_code == 200  # Prometheus needs no token
    assert plane.infer() == 200  # nothing above stopped it


def test_by_default_local_models_must_be_under_the_working_or_manifest_folder(
        models: Path, tmp_path: Path, up: list[Up]) -> None:
    """Without --model-root, a token holder cannot point the plane at any readable file: only
    the folder turnout up runs in and those of its -f files count; --any-model-path lifts it."""
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(isvc("iris", f"file://{models}/v1")))

    def start(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serving.cli", "up", "-f", "m.yaml",
                               "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                               "--ready-timeout", "1", *flags],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    refused = start()
    assert refused.returncode == 2, refused.stderr
    assert "is outside the allowed model roots" in refused.stderr
    assert str(tmp_path) in refused.stderr and "--model-root" in refused.stderr
    assert not (tmp_path / ".turnout" / "state.json").exists()   # nothing was started
    inside = tmp_path / "local"
    inside.mkdir()
    (inside / "model.joblib").write_bytes((models / "v1" / "model.joblib").read_bytes())
    plane = Up(tmp_path, isvc("iris", "local"), test_model_root=False)
    up.append(plane)   # a path under the working folder needs no flag
    plane.wait(lambda: plane.infer() == 200, what="local model served")
    assert plane.stop() == 0, (tmp_path / "up.log").read_text()[-3000:]
    (tmp_path / "other").mkdir()
    anywhere = Up(tmp_path / "other", isvc("iris", f"file://{models}/v1"), args=("--any-model-path",))
    up.append(anywhere)
    anywhere.wait(lambda: anywhere.infer() == 200, what="--any-model-path served")
