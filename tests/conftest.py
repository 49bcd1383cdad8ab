"""Shared fixtures: free ports, real ``turnout serve`` processes, and real model files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.processes import child_env, terminate

# Caches the code under test writes (compiled models, downloads) go to a temp dir, never home.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="turnout-test-cache-")



_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port no earlier call in this test process returned: a port is free only
    until something binds it, and the kernel may hand the same one out twice in a row (two
    servers of one test then collide, and the second exits on 'address in use')."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def basetemp(path: Path) -> Path:
    """pytest's base temporary folder above ``path``: where tests make their models, so the
    root a test gives ``turnout up --model-root`` (the plane refuses models outside its roots)."""
    for parent in path.parents:
        if parent.parent.name.startswith("pytest-of-"):
            return parent
    return path.parent


def _started_strict(answer: httpx.Response) -> bool:
    """Loading finished but a model failed (strict readiness's 503): started, for the many
    tests whose repositories hold a broken model on purpose."""
    if answer.status_code != 503:
        return False
    reason = str(answer.json().get("reason") or "")
    return reason.startswith("model '")


class ServerProcess:
    """A real ``turnout serve`` subprocess on loopback ports."""

    def __init__(self, path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self._path, self._extra = path, extra
        self._env = child_env(env)
        self._spawn()

    def _spawn(self) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log_path = self._path.parent / f"server-{self.http_port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", str(self._path),
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             *self._extra], stdout=self._log, stderr=subprocess.STDOUT, env=self._env)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 60) -> ServerProcess:
        deadline = time.monotonic() + timeout
        respawns = 2  # free_port() releases the port before the server binds it; under load
        while time.monotonic() < deadline:  # an outgoing connection can take it meanwhile
            if self.proc.poll() is not None:
                if respawns and any(sign in self.log().lower()
                                    for sign in ("address already in use", "cannot bind")):
                    respawns -= 1
                    self._log.close()
                    self._spawn()
                    continue
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                answer = httpx.get(f"{self.url}/v2/health/ready", timeout=1)
                if answer.status_code == 200 or _started_strict(answer):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = terminate(self.proc)
        self._log.close()
        return code


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Real models made by the real frameworks, plus the in-process objects to compare with."""
    import joblib
    import numpy as np
    import onnx
    import xgboost as xgb
    from onnx import TensorProto, helper
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    root = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    x_iris = rng.normal(size=(150, 4))
    y_iris = (x_iris[:, 0] + x_iris[:, 1] > 0).astype(int) + (x_iris[:, 2] > 0.5)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(x_iris, y_iris)
    logreg = LogisticRegression(max_iter=500).fit(x_iris, y_iris)
    for version, model in (("1", tree), ("2", logreg)):
        (root / "iris" / version).mkdir(parents=True)
        joblib.dump(model, root / "iris" / version / "model.joblib")

    x_xgb = rng.normal(size=(400, 32)).astype(np.float32)
    y_xgb = (x_xgb[:, :3].sum(axis=1) > 0).astype(int) + (x_xgb[:, 3] > 1)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 6,
                         "seed": 0}, xgb.DMatrix(x_xgb, label=y_xgb), num_boost_round=20)
    (root / "xgb").mkdir()
    booster.save_model(str(root / "xgb" / "model.json"))

    w1 = rng.normal(size=(8, 16)).astype(np.float32)
    w2 = rng.normal(size=(16, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.flatten()),
         helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.flatten())])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (root / "mlp").mkdir()
    onnx.save(onnx_model, root / "mlp" / "model.onnx")

    (root / "mlp_batched").mkdir()
    onnx.save(onnx_model, root / "mlp_batched" / "model.onnx")
    (root / "mlp_batched" / "model-settings.yaml").write_text(yaml.safe_dump(
        {"batching": {"max_batch_size": 32, "max_latency_ms": 20}}))

    echo_types = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                  "INT64", "FP16", "FP32", "FP64", "BYTES"]
    for datatype in echo_types:
        folder = root / f"echo_{datatype.lower()}"
        folder.mkdir()
        (folder / "model-settings.yaml").write_text(yaml.safe_dump({
            "runtime": "turnout_test_runtimes:Echo",
            "inputs": [{"name": "x", "datatype": datatype, "shape": [-1, -1]}]}))
    for name, cls, params in (("failing", "Failing", {}), ("slow", "Slow", {"delay": 1.0})):
        (root / name).mkdir()
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump({
            "runtime": f"turnout_test_runtimes:{cls}", "parameters": params,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    (root / "broken").mkdir()
    (root / "broken" / "model.joblib").write_bytes(b"this is not a pickle")
    return {"root": root, "iris_v1": tree, "iris_v2": logreg, "xgb": booster, "mlp": (w1, w2),
            "echo_types": echo_types}


@pytest.fixture(scope="module")
def server(model_zoo: dict[str, object], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    """One server over the whole zoo, shared by a test module (its tests only read state).
    The zoo holds a broken model on purpose: the multi-model case readiness is relaxed for."""
    proc = ServerProcess(model_zoo["root"], "--max-payload-bytes", str(1 << 20),  # type: ignore[arg-type]
                         "--no-strict-readiness")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    """Factory for servers a test owns (and may signal); all are stopped afterwards."""
    started: list[ServerProcess] = []

    def start(path: Path, *extra: str) -> ServerProcess:
        proc = ServerProcess(path, *extra)
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.stop()
