"""The command line: ``turnout serve``, ``turnout router`` and ``turnout up`` refuse a
non-loopback address without authentication (one line, exit 2) unless ``--insecure`` (then a
warning); bad authentication settings stop the start; ``turnout api-key`` makes keys; and
``turnout up`` end to end: its router authenticates with the keys given, enforces
``spec.turnout.auth``, and its admin API takes only the token the plane wrote (0600).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.security.auth_support import (
    KEYS,
    Child,
    Server,
    api_key,
    echo_models,
    free_port,
    keys_file,
    sha,
)

IRIS = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                    "data": [5.1, 3.5, 1.4, 0.2]}]}


def turnout(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, input=stdin,
                          env={**os.environ, **(env or {})})


REFUSAL = ("refusing to listen on 0.0.0.0 without authentication; configure --api-keys-file or "
           "--jwks (docs/security.md), bind 127.0.0.1, or pass --insecure if the network is "
           "protected otherwise\n")


def test_serve_refuses_a_public_address_without_authentication(tmp_path: Path) -> None:
    root = echo_models(tmp_path / "models")
    done = turnout("serve", str(root), "--host", "0.0.0.0", "--http-port", str(free_port()),
                   "--grpc-port", "0")
    assert (done.returncode, done.stderr) == (2, "turnout serve: " + REFUSAL)
    done = turnout("serve", str(root), "--http-port", str(free_port()), "--grpc-port", "0",
                   env={"TURNOUT_HOST": "0.0.0.0"})  # the variable, as in the images
    assert (done.returncode, done.stderr) == (2, "turnout serve: " + REFUSAL)


def test_router_and_up_refuse_a_public_address_without_authentication(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("services: []\n")
    done = turnout("router", "--config", str(routes), "--host", "0.0.0.0", "--http-port",
                   str(free_port()), "--grpc-port", "0", "--admin-port", "0")
    assert (done.returncode, done.stderr) == (2, "turnout router: " + REFUSAL)
    manifest = tmp_path / "isvc.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "iris"}, "spec": {"predictor": {"model": {
            "modelFormat": {"name": "sklearn"}, "storageUri": f"file://{tmp_path}"}}}}))
    done = turnout("up", "-f", str(manifest), "--host", "0.0.0.0", "--state-dir",
                   str(tmp_path / "state"))
    assert (done.returncode, done.stderr) == (2, "turnout up: " + REFUSAL)
    assert not (tmp_path / "state" / "logs").exists()  # nothing was started


def test_bad_authentication_settings_stop_the_start(tmp_path: Path) -> None:
    root = echo_models(tmp_path / "models")
    (tmp_path / "keys").write_text(f"alice:{KEYS['alice']}\n")  # a key, not its hash
    done = turnout("serve", str(root), "--api-keys-file", str(tmp_path / "keys"),
                   "--http-port", str(free_port()), "--grpc-port", "0")
    assert done.returncode == 2
    assert done.stderr.startswith("turnout serve: invalid API keys:\n  ")
    assert "keys:1: not a SHA-256 in hex" in done.stderr and KEYS["alice"] not in done.stderr
    done = turnout("serve", str(root), "--jwks", "https://idp.test/jwks", "--http-port",
                   str(free_port()), "--grpc-port", "0")
    assert (done.returncode, done.stderr.strip()) == (
        2, "turnout serve: --jwks needs --jwt-issuer and --jwt-audience: a JWKS is often "
        "shared by many applications, so a token must be checked to be meant for this one")


def test_insecure_starts_on_a_public_address_with_a_warning(tmp_path: Path) -> None:
    root = echo_models(tmp_path / "models")
    server = Server(root, tmp_path, "--host", "0.0.0.0", "--insecure")
    try:
        server.wait_ready()
        assert httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [
            {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).status_code == 200
        assert "turnout serve listens on 0.0.0.0 without authentication (--insecure): anyone " \
            "who can reach it can call it" in server.log()
    finally:
        assert server.stop() == 0
    keys = keys_file(tmp_path / "keys")  # with keys, a public address needs no --insecure
    server = Server(root, tmp_path, "--host", "0.0.0.0", env={"TURNOUT_API_KEYS_FILE": str(keys)})
    try:
        server.wait_ready()
        row = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        assert httpx.post(f"{server.url}/v2/models/m/infer", json=row).status_code == 401
        assert httpx.post(f"{server.url}/v2/models/m/infer", json=row,
                          headers=api_key("alice")).status_code == 200
        assert "without authentication" not in server.log()
    finally:
        server.stop()


def test_api_key_command(tmp_path: Path) -> None:
    done = turnout("api-key", "new", "--name", "ci", "--scope", "inference", "--scope",
                   "management", "--append", str(tmp_path / "keys"))
    key_line, entry_line = done.stdout.splitlines()
    key = key_line.removeprefix("key: ")
    assert key.startswith("tnt_") and len(key) > 40
    assert entry_line == f"entry: ci:inference,management:{sha(key)}"
    assert (tmp_path / "keys").read_text() == f"ci:inference,management:{sha(key)}\n"
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o600
    done = turnout("api-key", "hash", stdin=KEYS["alice"] + "\n")
    assert done.stdout == f"entry: key-{sha(KEYS['alice'])[:8]}:inference:{sha(KEYS['alice'])}\n"


# -- turnout up, end to end --------------------------------------------------------------------

@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path_factory.mktemp("plane")
    model = folder / "iris"
    model.mkdir()
    x, y = load_iris(return_X_y=True)
    joblib.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y),
                model / "model.joblib")
    keys_file(folder / "api-keys")
    docs = [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": {"name": name}, "spec": {
                 "predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                         "storageUri": f"file://{model}"}},
                 **({"turnout": {"auth": {"principals": ["alice"]}}} if name == "private"
                    else {})}} for name in ("iris", "private")]
    (folder / "manifest.yaml").write_text(yaml.safe_dump_all(docs))
    http_port = free_port()
    child = Child(["up", "-f", "manifest.yaml", "--http-port", str(http_port), "--grpc-port",
                   str(free_port()), "--api-keys-file", "api-keys"], folder / "up.log", cwd=folder)
    url = f"http://127.0.0.1:{http_port}"
    try:
        child.wait_for(lambda: httpx.post(f"{url}/v2/models/private/infer", json=IRIS,
                                          headers=api_key("alice")).status_code == 200,
                       timeout=120, what="turnout up")
        yield {"url": url, "folder": folder, "child": child}
    finally:
        assert child.stop() == 0, child.log()[-3000:]


def test_up_router_authenticates_and_enforces_spec_turnout_auth(plane: dict) -> None:
    url = plane["url"]
    assert httpx.post(f"{url}/v2/models/iris/infer", json=IRIS).status_code == 401
    assert httpx.post(f"{url}/v2/models/iris/infer", json=IRIS,
                      headers=api_key("bob")).status_code == 200
    refused = httpx.post(f"{url}/v2/models/private/infer", json=IRIS, headers=api_key("bob"))
    assert (refused.status_code, refused.json()) == (
        403, {"error": "credential 'bob' may not call 'private'"})
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


def test_up_router_admin_takes_only_the_planes_token(plane: dict) -> None:
    folder: Path = plane["folder"]
    state = folder / ".turnout"
    token = state / "router-admin-token"
    assert token.stat().st_mode & 0o777 == 0o600
    routes = yaml.safe_load((state / "routes.yaml").read_text())
    assert {s["name"]: s.get("auth") for s in routes["services"]} == {
        "iris": None, "private": {"principals": ["alice"]}}
    admin = _router_admin_port(plane["child"])
    assert httpx.get(f"http://127.0.0.1:{admin}/config").status_code == 401
    answer = httpx.get(f"http://127.0.0.1:{admin}/config",
                       headers={"authorization": f"Bearer {token.read_text()}"})
    assert [s["name"] for s in answer.json()["services"]] == ["iris", "private"]
    status = turnout("status", "-o", "json", cwd=folder)  # the plane reads the router fine
    assert status.returncode == 0, status.stderr
    assert {s["name"] for s in json.loads(status.stdout)["services"]} == {"iris", "private"}


def _router_admin_port(up: Child) -> str:
    """The plane's router's --admin-port, from its command line."""
    for process in psutil.Process(up.proc.pid).children(recursive=True):
        cmd = process.cmdline()
        if "router" in cmd and "--admin-port" in cmd:
            return cmd[cmd.index("--admin-port") + 1]
    raise AssertionError("no router process")
