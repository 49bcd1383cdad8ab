"""The benchmark harness's quick mode, end to end, so it cannot rot.

It builds the ONNX model, starts Turnout, probes and drives it with h2load over REST JSON, REST
binary and gRPC at concurrency 1 and 8, and writes JSONL and RESULTS.md. Nothing here is timed:
only that every run completed with answers and without errors.
"""

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
    pytest.mark.skipif(shutil.which("h2load") is None,
                       reason="h2load is not installed (Debian package nghttp2-client)"),
]


def test_quick_mode_runs_end_to_end(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--quick", "--out", str(out), "--work", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (jsonl,) = (out / "results").glob("quick-*.jsonl")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"meta", "floor", "start", "load", "peak", "end"} <= kinds, kinds
    assert not [r for r in records if r["kind"] in ("unsupported", "server_error")], records

    loads = [r for r in records if r["kind"] == "load"]
    assert {(r["server"], r["model"], r["protocol"], r["concurrency"]) for r in loads} == {
        ("turnout", "mlp", protocol, c)
        for protocol in ("rest-json", "rest-binary", "grpc") for c in (1, 8)}
    for r in loads:
        assert r["ok"], r
        assert r["rps"] > 0 and r["completed"] > 0, r
        assert r["errors"] == 0, r
        assert r["p50_ms"] is not None and r["p99_ms"] is not None, r

    (start,) = [r for r in records if r["kind"] == "start"]
    assert start["cold_start_s"] > 0 and start["idle_rss_mb"] > 0

    text = (out / "RESULTS.md").read_text()
    assert "### mlp" in text and "REST binary" in text and "gRPC" in text


def test_router_hop_bench_runs_end_to_end(tmp_path: Path) -> None:
    """The hop benchmark (loadtests/router_hop) with one short run per cell: every run through
    the router and directly completed with real answers and no errors."""
    out = tmp_path / "hop.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.router_hop.bench", "--duration", "0.4", "--warmup",
         "0.1", "--reps", "1", "--concurrency", "2", "--models", "mlp", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["protocol"], r["path"]) for r in records} == {
        (protocol, path) for protocol in ("REST", "gRPC") for path in ("direct", "router")} | {
        ("gRPC", "router-grpc-hop")}  # the second router: routes that keep a gRPC hop
    for r in records:
        assert r["ok"] and r["errors"] == 0 and r["completed"] > 0, r
    assert "| mlp | REST | 2 |" in done.stdout and "| mlp | gRPC | 2 |" in done.stdout
    assert "| mlp | gRPC (gRPC hop) | 2 |" in done.stdout
