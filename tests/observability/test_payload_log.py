"""Payload logging as CloudEvents (KServe's ``logger``) and mirror disagreements, end to end.

Real processes on loopback: two ``turnout serve`` model servers (``m`` echoes on one, doubles
on the other), a router on its own event loop, and a CloudEvents sink: a small aiohttp server
in a subprocess that appends what it receives (headers and body bytes) to a JSON-lines file.
Clients are real (httpx, tritonclient's gRPC client).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


def _load(name: str, path: Path) -> Any:
    """A test helper module by path (tests are not a package and never import each other)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TESTS = Path(__file__).parents[1]
_ROUTER = _load("turnout_router_fixtures", _TESTS / "router" / "conftest.py")
RouterThread = _ROUTER.RouterThread
ServerProcess = _ROUTER.ServerProcess
free_port = _ROUTER.free_port

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}


def _settings(path: Path, runtime: str, **params: Any) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": f"turnout_test_runtimes:{runtime}", "parameters": params,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``echo`` answers y = x, ``double`` y = 2x (the canary that disagrees)."""
    root = tmp_path_factory.mktemp("payload-zoo")
    _settings(root / "echo" / "m", "Echo")
    _settings(root / "double" / "m", "Slow", delay=0.0)
    procs = {name: ServerProcess(root / name) for name in ("echo", "double")}
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def _routes(servers: dict[str, Any], *, mirror: bool = False,
            logger: dict[str, Any] | None = None) -> dict[str, Any]:
    echo, double = servers["echo"], servers["double"]
    service: dict[str, Any] = {"name": "m", "variants": [
        {"name": "stable", "weight": 100, "revision": "m-00001", "http": [echo.url],
         "grpc": [echo.grpc_url]},
        {"name": "canary", "weight": 0, "revision": "m-00002", "http": [double.url],
         "grpc": [double.grpc_url]}]}
    if mirror:
        service["mirror"] = {"variant": "canary", "percent": 100}
    if logger is not None:
        service["logger"] = logger
    return {"upstream": {"grpc_via_http": True}, "services": [service]}


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


# -- mirror disagreements -------------------------------------------------------------------


def test_mirror_disagreements_are_kept_and_served_behind_the_admin_token(servers, tmp_path):
    router = RouterThread(_routes(servers, mirror=True), tmp_path)
    try:
        url = f"{router.admin}/mirror/disagreements"
        assert httpx.get(url).status_code == 401  # behind the admin token like the rest
        with httpx.Client() as client:
            resp = client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                               headers={"x-request-id": "req-1"})
            assert resp.status_code == 200
            assert resp.json()["outputs"][0]["data"] == [1.5, -2.0]
        records = wait_for(lambda: httpx.get(url, headers=router.admin_headers).json()
                           ["disagreements"])
        assert len(records) == 1
        record = records[0]
        assert record["service"] == "m" and record["request_id"] == "req-1"
        assert record["protocol"] == "rest"
        assert record["primary"]["variant"] == "stable"
        assert record["primary"]["revision"] == "m-00001"
        assert record["primary"]["outputs"]["y"] == {"shape": [1, 2], "data": [1.5, -2.0],
                                                     "truncated": False}
        assert record["shadow"]["variant"] == "canary"
        assert record["shadow"]["revision"] == "m-00002"
        assert record["shadow"]["outputs"]["y"]["data"] == [3.0, -4.0]
        assert record["comparison"]["numeric_total"] == 2
        assert record["comparison"]["numeric_disagreed"] == 2
        assert record["comparison"]["mean_abs_difference"] == pytest.approx(1.75)
        assert record["request"]["json"] == BODY

        # gRPC copies are compared and recorded too
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(router.grpc_url) as client:
            x = grpcclient.InferInput("x", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[0.5, 4.0]], dtype=np.float32))
            answer = client.infer("m", [x], headers={"x-request-id": "grpc-1"})
            assert answer.as_numpy("y").tolist() == [[0.5, 4.0]]
        records = wait_for(lambda: len(httpx.get(url, headers=router.admin_headers).json()
                                       ["disagreements"]) == 2 and
                           httpx.get(url, headers=router.admin_headers).json()["disagreements"])
        newest = records[0]
        assert newest["protocol"] == "grpc" and newest["request_id"] == "grpc-1"
        assert newest["shadow"]["outputs"]["y"]["data"] == [1.0, 8.0]
        assert "base64" in newest["request"]

        # filters: by service and a limit; a bad limit is a 400, never a 500
        only = httpx.get(url, params={"limit": 1}, headers=router.admin_headers).json()
        assert [r["request_id"] for r in only["disagreements"]] == ["grpc-1"]
        none = httpx.get(url, params={"service": "other"}, headers=router.admin_headers).json()
        assert none == {"disagreements": []}
        bad = httpx.get(url, params={"limit": "x"}, headers=router.admin_headers)
        assert bad.status_code == 400 and "limit" in bad.json()["error"]
    finally:
        router.stop()
