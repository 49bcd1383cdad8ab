"""The authentication cost benchmark (loadtests/auth_cost.py) end to end, briefly, so it cannot
rot: a model server without authentication, one with API keys and one with a JWKS, REST and
gRPC through h2load with the credential on every request. Nothing is timed here: only that
every run completed with answers and without errors (a refused request would be one)."""

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
    pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) needed"),
]


def test_auth_cost_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "auth.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.auth_cost", "--duration", "0.3", "--warmup", "0",
         "--reps", "1", "--concurrency", "2", "--models", "mlp", "--no-pin", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records = [r for r in lines if r.get("kind") != "guard"]
    guard, = [r for r in lines if r.get("kind") == "guard"]
    assert guard["key_us"] > 0 and guard["jwt_us"] > 0
    assert {(r["server"], r["protocol"]) for r in records} == {
        (server, protocol) for server in ("off", "key", "jwt") for protocol in ("REST", "gRPC")}
    assert all(r["ok"] and r["errors"] == 0 and r["completed"] > 0 for r in records), records
    assert "| mlp | REST | 2 |" in done.stdout and "| mlp | gRPC | 2 |" in done.stdout
