"""The router under sustained overload: at three times what its variant admits, the excess is
refused at once with 429 + Retry-After and the router's memory stays bounded; the same load
with a cap that admits everything shows what the cap saves. A real router process in front of
a real model server, an open loop of 1 MiB requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.overload_support import check_overload
from tests.security.hostile_support import RouterProcess, ServerProcess

DELAY = 0.2
THREADS = 2


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory):
    """``m`` doubles its input after 0.2 s on two threads and queues whatever comes."""
    root = tmp_path_factory.mktemp("overload")
    (root / "m").mkdir()
    (root / "m" / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": "turnout_test_runtimes:Slow", "parameters": {"delay": DELAY},
        "max_queue": 100_000, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    server = ServerProcess(root, "--inference-threads", str(THREADS)).wait_ready()
    yield server
    server.stop()


def _router(tmp: Path, upstream: ServerProcess, max_pending: int) -> RouterProcess:
    tmp.mkdir()
    return RouterProcess(tmp, upstream, service={"upstream": {
        "max_pending": max_pending, "timeout_seconds": 60}}).wait_ready()


def test_sustained_overload_is_refused_fast_with_memory_bounded(upstream, tmp_path) -> None:
    bounded = _router(tmp_path / "bounded", upstream, max_pending=THREADS)
    unbounded = _router(tmp_path / "unbounded", upstream, max_pending=100_000)
    try:
        check_overload((f"{bounded.url}/v2/models/m/infer", bounded.proc.pid),
                       (f"{unbounded.url}/v2/models/m/infer", unbounded.proc.pid),
                       capacity=THREADS / DELAY,
                       delay=DELAY, max_wait=2 * DELAY + 1.0)
    finally:
        bounded.stop()
        unbounded.stop()
