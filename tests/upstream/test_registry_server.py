"""The registry layer against a real ``mlflow server`` that proxies artifacts
(``mlflow-artifacts:``): register, resolve, fetch into a cache, concurrent fetches, the CLI.

One server for the module (starting it takes ~20 s on a busy machine).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from upstream.registry import Registry, RegistryError

from .test_registry import (
    ENV_URIS,
    free_port,
    make_model_folder,
    predictions,
    tree,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT_S = 120


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_URIS}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log_path = base / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{base / 'x.db'}",
             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=base, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        print(f"mlflow server up in {time.monotonic() - started:.1f}s")
        folders = {"v1": base / "trained" / "v1", "v2": base / "trained" / "v2"}
        metrics = {key: make_model_folder(folder, c=c)
                   for (key, folder), c in zip(folders.items(), (1.0, 0.05), strict=True)}
        yield {"url": url, "base": base, "log": log_path, "folders": folders, "metrics": metrics,
               "artifacts": base / "artifacts"}
    finally:
        with_group = os.getpgid(process.pid) == process.pid
        (os.killpg if with_group else os.kill)(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(autouse=True)
def _no_registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_URIS:
        monkeypatch.delenv(name, raising=False)


def _downloads(server: dict, run_id: str, file: str = "model.joblib") -> int:
    """How many times the server was asked for ``file`` of the run's model folder."""
    needle = "GET /api/2.0/mlflow-artifacts/artifacts/"
    return sum(1 for line in server["log"].read_text().splitlines()
               if needle in line and f"/{run_id}/artifacts/model/{file}" in line)


def _cli(server: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "upstream.registry.cli", "registry", "--tracking-uri",
         server["url"], *argv], cwd=server["base"], env=_env(), capture_output=True, text=True,
        timeout=120, check=False)


def test_register_resolve_and_fetch_through_the_server(server: dict, tmp_path: Path) -> None:
    registry = Registry(server["url"], state_dir=tmp_path / "state")
    v1 = registry.register(server["folders"]["v1"], "iris", framework="sklearn",
                           alias="champion", lineage={"pipeline_run": "kfp-1"})
    assert v1.pinned_uri == "models:/iris/1"
    assert v1.download_uri == f"mlflow-artifacts:/1/{v1.run_id}/artifacts/model"
    # the server stored exactly the folder's files
    stored = server["artifacts"] / "1" / v1.run_id / "artifacts" / "model"
    assert tree(stored) == tree(server["folders"]["v1"])
    assert not (tmp_path / "state").exists()  # a tracking server needs no local state

    resolved = registry.resolve("models:/iris@champion")
    assert resolved == v1
    assert resolved.metrics == server["metrics"]["v1"]
    assert resolved.lineage == {"pipeline_run": "kfp-1"}
    cache = tmp_path / "cache"
    location = Path(registry.fetch(resolved, cache_dir=cache))
    assert location.parent == cache / "iris" and location.name.startswith("1-")
    assert tree(location) == tree(server["folders"]["v1"])
    assert predictions(location) == predictions(server["folders"]["v1"])
    assert _downloads(server, v1.run_id) == 1
    assert registry.fetch(resolved, cache_dir=cache) == str(location)  # cached: no request
    assert _downloads(server, v1.run_id) == 1

    with pytest.raises(RegistryError, match=r"model 'iris' has no version 7 \(the latest is 1\)"):
        registry.resolve("models:/iris/7")
    with pytest.raises(RegistryError, match="model 'iris' has no alias 'staging'"):
        registry.resolve("models:/iris@staging")
    with pytest.raises(RegistryError, match=r"unknown model 'nope' in the registry at "
                       rf"{server['url']} \(registered models: iris\)"):
        registry.resolve("models:/nope@champion")


FETCH = """
import sys, time
from pathlib import Path
from upstream.registry import Registry
url, uri, cache, go = sys.argv[1:]
registry = Registry(url)
resolved = registry.resolve(uri)
import mlflow.artifacts  # noqa: F401 - loaded before the start line, so both start together
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.01)
print(registry.fetch(resolved, cache_dir=Path(cache)))
"""


def test_concurrent_fetches_in_two_processes_download_once(server: dict, tmp_path: Path) -> None:
    registry = Registry(server["url"])
    v = registry.register(server["folders"]["v2"], "iris-concurrent", framework="sklearn")
    cache, go = tmp_path / "cache", tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", FETCH, server["url"], v.pinned_uri,
                                  str(cache), str(go)], cwd=ROOT, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    for child in children:  # both resolved and waiting: start them together
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.communicate(timeout=30)
    go.touch()
    outputs = [c.communicate(timeout=90) for c in children]
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    locations = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(locations) == 1
    location = Path(locations.pop())
    assert tree(location) == tree(server["folders"]["v2"])
    assert _downloads(server, v.run_id) == 1
    assert _downloads(server, v.run_id, "extra/notes.txt") == 1
    assert [p.name for p in location.parent.iterdir() if p.name.startswith(".partial")] == []


def test_cli_against_the_server(server: dict) -> None:
    registry = Registry(server["url"])
    first = registry.register(server["folders"]["v1"], "iris-cli", framework="sklearn",
                              alias="champion", description="baseline")
    second = registry.register(server["folders"]["v2"], "iris-cli", framework="sklearn",
                               lineage={"pipeline": "iris-train"})

    listed = _cli(server, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("iris-cli "))
    assert row[:4] == ["iris-cli", "2", "champion=1", "-"]

    shown = _cli(server, "show", "iris-cli")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "version 2" in out and "version 1  [champion]" in out
    assert second.download_uri in out and first.download_uri in out
    assert first.run_id in out
    assert f"accuracy={server['metrics']['v2']['accuracy']:g}" in out
    assert "description: baseline" in out
    assert "lineage:     pipeline=iris-train" in out
    assert "inputs:      features FP64 [-1, 4]" in out

    moved = _cli(server, "alias", "iris-cli", "champion", "2")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == "models:/iris-cli@champion -> models:/iris-cli/2 (was 1)"
    assert registry.resolve("models:/iris-cli@champion").version == "2"

    missing = _cli(server, "alias", "iris-cli", "staging", "--delete")
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("turnout registry: model 'iris-cli' has no alias 'staging' "
                                      "(aliases: champion -> 2)")
    unknown = _cli(server, "show", "nope")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.startswith("turnout registry: unknown model 'nope'")


# ---- serving from this server: turnout serve and turnout up ------------------------------


def _serve(uri: str, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (cwd / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", uri, "--http-port",
                             str(port), "--grpc-port", "0"], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cwd / f"serve-{port}.log").read_text()
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    raise TimeoutError((cwd / f"serve-{port}.log").read_text())


def _served_labels(url: str, model: str) -> list[int]:
    import httpx
    from sklearn.datasets import load_iris

    x, _ = load_iris(return_X_y=True)
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP64",
                        "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return next(o["data"] for o in answer.json()["outputs"] if o["name"] == "predict")


def test_turnout_serve_loads_a_models_uri_from_the_server(server: dict, tmp_path: Path) -> None:
    import httpx

    registry = Registry(server["url"], state_dir=tmp_path / "state")
    version = registry.register(server["folders"]["v2"], "served", framework="sklearn",
                                alias="prod")
    env = {**_env(), "MLFLOW_TRACKING_URI": server["url"], "XDG_CACHE_HOME": str(tmp_path)}
    proc, url = _serve("models:/served@prod", tmp_path, env)
    try:
        assert _served_labels(url, "served") == predictions(server["folders"]["v2"])
        meta = httpx.get(f"{url}/v2/models/served", timeout=10).json()
        assert meta["versions"] == [version.version]
    finally:
        proc.terminate()
        proc.wait(30)
    # An alias that does not exist: one line, exit 2, no traceback.
    done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "models:/served@nope"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "nope" in done.stderr


def test_turnout_up_follows_an_alias_on_the_server(server: dict, tmp_path: Path) -> None:
    from tests.control.planes import Up

    registry = Registry(server["url"], state_dir=tmp_path / "state")
    first = registry.register(server["folders"]["v1"], "upiris", framework="sklearn",
                              alias="champion")
    doc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": "upiris"},
           "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                            "storageUri": "models:/upiris@champion"}}}}
    up = Up(tmp_path, doc, env={**_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")},
            args=("--registry-uri", server["url"], "--registry-poll", "0"))
    try:
        up.wait(lambda: up.status("upiris")["variants"][0]["replicas"]["ready"] == 1,
                timeout=120, what="upiris ready")
        assert _served_labels(up.url, "upiris") == predictions(server["folders"]["v1"])
        assert up.variant("stable", "upiris")["registryVersion"] == first.pinned_uri
        second = registry.register(server["folders"]["v2"], "upiris", framework="sklearn")
        registry.set_alias("upiris", "champion", second.version)
        assert second.pinned_uri in up.cli("rollout", "refresh", "upiris")
        up.wait(lambda: up.variant("stable", "upiris")["registryVersion"] == second.pinned_uri
                and up.variant("stable", "upiris")["replicas"]["ready"] == 1,
                timeout=120, what="second version serving")
        up.wait(lambda: _served_labels(up.url, "upiris") == predictions(server["folders"]["v2"]),
                timeout=30, what="second version's answers")
    finally:
        assert up.stop() == 0, (tmp_path / "up.log").read_text()[-3000:]
