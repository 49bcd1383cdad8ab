"""The TLS cost benchmark (loadtests/tls_cost.py) end to end, briefly, so it cannot rot: a plain
and a TLS model server, REST and gRPC through h2load, a few timed new connections. Nothing is
timed here: only that every run completed with answers and without errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("h2load") is None or shutil.which("openssl") is None,
                       reason="h2load (nghttp2-client) and openssl are needed"),
]


def test_tls_cost_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "tls.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.tls_cost", "--duration", "0.3", "--warmup", "0",
         "--reps", "1", "--concurrency", "2", "--models", "mlp", "--handshakes", "5",
         "--no-pin", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    loads = [r for r in records if r.get("kind") != "connection"]
    assert {(r["server"], r["protocol"]) for r in loads} == {
        (server, protocol) for server in ("plain", "TLS") for protocol in ("REST", "gRPC")}
    assert all(r["ok"] and r["errors"] == 0 and r["completed"] > 0 for r in loads), loads
    assert {r["server"] for r in records if r.get("kind") == "connection"} == {"plain", "TLS"}
    assert "| mlp | REST | 2 |" in done.stdout
