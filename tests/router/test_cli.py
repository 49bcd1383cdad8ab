"""``turnout router`` as a process: refuses a bad file, serves the documented example, drains."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

EXAMPLE = Path(__file__).parents[2] / "examples" / "routes.yaml"
IRIS = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [0.3, -0.2, 1.4, 0.2]}]}


def test_bad_routes_file_is_refused_with_its_errors(tmp_path):
    bad = tmp_path / "routes.yaml"
    bad.write_text("services: [{name: m, variants: [{name: a, wieght: 1}]}]")
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "router", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "services.0.variants.0" in proc.stderr and "wieght" in proc.stderr


def test_grpc_threads_is_a_flag_and_is_checked():
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "router", "--config",
                           str(EXAMPLE), "--grpc-threads", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "grpc_threads" in proc.stderr and "greater than or equal to 1" in proc.stderr


def test_example_routes_serve_through_the_cli(upstreams, tmp_path, free_port_fn, model_zoo):
    a1, b = upstreams["a1"], upstreams["b"]
    text = EXAMPLE.read_text()
    # the example's two model servers become a1 (serving iris_tree) and b (iris_logreg)
    text = (text.replace("http://127.0.0.1:9001", a1.url).replace("127.0.0.1:9101", a1.grpc_url)
            .replace("http://127.0.0.1:9002", b.url).replace("127.0.0.1:9102", b.grpc_url))
    text = text.replace("model: iris\n        http: [" + a1.url, "model: iris_tree\n        http: ["
                        + a1.url).replace("model: iris\n", "model: iris_logreg\n")
    text = text.replace('version: "2"', 'version: "1"')
    routes = tmp_path / "routes.yaml"
    routes.write_text(text)
    port, admin = free_port_fn(), free_port_fn()
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "router", "--config", str(routes),
                             "--http-port", str(port), "--grpc-port", "0",
                             "--admin-port", str(admin)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        resp = httpx.post(f"{url}/v2/models/iris/infer", json=IRIS, headers={"x-experiment": "b"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-turnout-variant"] == "canary"
        assert resp.json()["model_name"] == "iris"
        config = f"http://127.0.0.1:{admin}/config"
        assert httpx.get(config).status_code == 401  # the admin API needs its token, even here
        token = (tmp_path / "routes.yaml.admin-token").read_text()  # made at start (0600)
        assert (tmp_path / "routes.yaml.admin-token").stat().st_mode & 0o777 == 0o600
        answer = httpx.get(config, headers={"authorization": f"Bearer {token}"})
        assert answer.json()["services"][0]["name"] == "iris"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_the_router_process_collects_garbage_less_often():
    """A fresh interpreter, as the router process is: start-up objects frozen, gen-0 threshold
    raised (the default 700 collected every few proxied requests)."""
    code = ("import gc; from router.cli import _tune_gc; before = gc.get_threshold(); "
            "_tune_gc(); print(before[0], gc.get_threshold()[0], gc.get_freeze_count() > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["700", "50000", "True"]
