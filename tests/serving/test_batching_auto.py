"""Automatic batching: on at load where it pays (measured), off where it does not, opt-outs.

Models are ``turnout_test_runtimes:FixedCost``: a fixed cost per call plus a cost per row,
so whether batching pays is the test's choice, not the machine's.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.runtime.settings import build_settings
from serving.server.repository import ModelSource, _load_version
from tests.conftest import ServerProcess
from tests.processes import PLUGINS

RUNTIME = "turnout_test_runtimes:FixedCost"
INPUTS = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
PAYS = {"fixed": 0.002, "per_row": 0.000005}   # 2 ms a call, 5 µs a row
FLAT = {"fixed": 0.0, "per_row": 0.0008}       # rows cost the same alone or in a batch
LONG = {"fixed": 0.01, "per_row": 0.000005}    # 10 ms a call: many requests arrive meanwhile


def settings(parameters: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"runtime": RUNTIME, "parameters": parameters, "inputs": INPUTS, **extra}


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], **kw: Any):
    monkeypatch.syspath_prepend(str(PLUGINS))
    source = ModelSource(name="m", versions={"1": tmp_path}, base_settings=fields)
    runtime, _ = _load_version(source, "1", tmp_path, **kw)
    return runtime


def test_on_where_a_batch_costs_less_per_row(tmp_path, monkeypatch, caplog) -> None:
    with caplog.at_level("INFO", logger="turnout.batching"):
        runtime = load(tmp_path, monkeypatch, settings(PAYS))
    batching = runtime.settings.batching
    assert batching is not None and batching.max_latency_ms == 0
    assert batching.max_batch_size == 64  # 2.3 ms for 64 rows: cost per row still falling
    assert "automatic batching on: one row" in caplog.text
    assert "max_batch_size 64, no added wait" in caplog.text


def test_off_where_rows_cost_as_much_as_calls(tmp_path, monkeypatch, caplog) -> None:
    with caplog.at_level("INFO", logger="turnout.batching"):
        runtime = load(tmp_path, monkeypatch, settings(FLAT))
    assert runtime.settings.batching is None
    assert "automatic batching off: one row" in caplog.text


def test_opt_outs_and_explicit_settings(tmp_path, monkeypatch) -> None:
    assert load(tmp_path, monkeypatch, settings(PAYS, batching="none")).settings.batching is None
    assert load(tmp_path, monkeypatch, settings(PAYS), auto_batching=False).settings.batching \
        is None
    assert load(tmp_path, monkeypatch, settings(PAYS, max_queue=4)).settings.batching is None
    # --max-batch-size does not override a model's batching: none
    assert load(tmp_path, monkeypatch, settings(PAYS, batching="none"),
                default_batching={"max_batch_size": 8}).settings.batching is None
    opted_out = build_settings(name="m", artifact=tmp_path, batching="none")  # any reader
    assert opted_out.batching is None and opted_out.auto_batching is False
    explicit = load(tmp_path, monkeypatch, settings(PAYS, batching={"max_batch_size": 4}))
    assert explicit.settings.batching.max_batch_size == 4
    assert explicit.settings.batching.max_latency_ms == 2.0  # as given, defaults untouched


def test_inline_models_are_not_batched(tmp_path, monkeypatch) -> None:
    fast = load(tmp_path, monkeypatch, settings({"fixed": 0.00001, "per_row": 0.0}))
    assert fast.execution == "inline" and fast.settings.batching is None


# -- through real servers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("autobatch")
    for name, fields in (("pays", settings(PAYS)), ("flat", settings(FLAT)), ("long", settings(LONG)),
                         ("optout", settings(PAYS, batching="none"))):
        (root / name).mkdir()
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump(fields))
    return root


@pytest.fixture(scope="module")
def servers(repo: Path):
    on = ServerProcess(repo).wait_ready()
    off = ServerProcess(repo, "--no-auto-batching").wait_ready()
    yield on, off
    on.stop()
    off.stop()


def infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def batches(url: str, model: str) -> tuple[float, float]:
    """(merged predict calls, rows in them) from the batch-size histogram."""
    text = httpx.get(f"{url}/metrics").text
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name.startswith("turnout_batch_size_rows") and s.labels.get("model") == model}
    return found.get("turnout_batch_size_rows_count", 0.0), found.get("turnout_batch_size_rows_sum", 0.0)


@pytest.mark.slow
def test_concurrent_requests_are_merged_only_where_it_pays(servers) -> None:
    on, off = servers
    assert "model pays version 1: automatic batching on" in on.log()
    assert "model flat version 1: automatic batching off: one row" in on.log()
    assert "automatic batching on" not in off.log()
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(1, 2)).astype(np.float32) for _ in range(96)]
    for model in ("pays", "flat", "optout"):
        with ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(lambda x, m=model: infer(on.url, m, x), xs))
        for x, y in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(y, x * 2)  # each caller gets exactly its own rows
    calls, rows = batches(on.url, "pays")
    assert rows == 96 and 0 < calls < 96  # merged: fewer predict calls than requests
    assert batches(on.url, "flat") == (0.0, 0.0) and batches(on.url, "optout") == (0.0, 0.0)


@pytest.mark.slow
def test_one_row_latency_at_concurrency_one_is_not_worse(servers) -> None:
    on, off = servers
    x = np.ones((1, 2), dtype=np.float32)

    def p50(url: str) -> float:
        with httpx.Client() as client:
            body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                "data": [1.0, 1.0]}]}
            seconds = []
            for _ in range(300):
                started = time.perf_counter()
                assert client.post(f"{url}/v2/models/pays/infer", json=body).status_code == 200
                seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)

    infer(on.url, "pays", x), infer(off.url, "pays", x)  # warm both
    with_batching, without = p50(on.url), p50(off.url)
    # No added wait: an idle batcher runs the request at once. Generous bound for a busy box.
    assert with_batching < without * 1.3 + 0.0005, (with_batching, without)


@pytest.mark.slow
def test_grpc_batches_fill_beyond_the_handler_threads(servers) -> None:
    """A synchronous gRPC handler holds its thread until its batch answers: with only the 8
    handler threads, no batch could hold more than 8 requests. The pool makes room for a
    batch of waiters once a batched model is called, so 48 concurrent calls to a model taking
    10 ms a batch merge further."""
    import asyncio

    import tritonclient.grpc.aio as grpcclient

    on, _ = servers
    rng = np.random.default_rng(9)
    xs = [rng.normal(size=(1, 2)).astype(np.float32) for _ in range(48)]

    async def burst() -> list[np.ndarray]:
        client = grpcclient.InferenceServerClient(on.grpc_url)
        try:
            async def one(x: np.ndarray) -> np.ndarray:
                tensor = grpcclient.InferInput("x", [1, 2], "FP32")
                tensor.set_data_from_numpy(x)
                return (await client.infer("long", [tensor])).as_numpy("y")
            await one(xs[0])  # the first call to a batched model makes room
            calls, rows = batches(on.url, "long")
            outs = []
            for _ in range(3):
                outs = await asyncio.gather(*(one(x) for x in xs))
            after_calls, after_rows = batches(on.url, "long")
            assert after_rows - rows == 3 * 48
            assert (after_rows - rows) / (after_calls - calls) > 8, (after_calls - calls)
            return outs
        finally:
            await client.close()

    for x, y in zip(xs, asyncio.run(burst()), strict=True):
        np.testing.assert_array_equal(y, x * 2)


class _Clocked:
    """A model timed on a fake clock: 2 ms a call plus 0.3 ms a row, three times slower for
    ``slow`` consecutive calls from call number ``start`` (a neighbour on the core)."""

    def __init__(self, clock: list[float], start: int, slow: int = 4) -> None:
        self.clock, self.start, self.slow, self.calls = clock, start, slow, 0
        self.inputs = [type("Spec", (), {"name": "x", "datatype": "FP32", "shape": [-1, 2]})]
        self.default_outputs = ["y"]

    def predict(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict:
        rows = len(inputs["x"])
        factor = 3.0 if self.start <= self.calls < self.start + self.slow else 1.0
        self.calls += 1
        self.clock[0] += factor * (0.002 + 0.0003 * rows)
        return {"y": inputs["x"]}


def test_a_slow_moment_during_timing_does_not_change_the_batch_size(monkeypatch) -> None:
    """Sizes are timed in interleaved rounds, so four slow calls in a row cannot all land on
    one size (back to back, they took every trial of 64 and 32 won)."""
    from serving.server import autobatch

    clock = [0.0]
    monkeypatch.setattr(autobatch.time, "perf_counter", lambda: clock[0])
    total = _Clocked(clock, start=10**9)
    autobatch._per_row_costs(total)
    for start in range(total.calls):
        per_row = autobatch._per_row_costs(_Clocked(clock, start))
        assert autobatch.chosen_size(per_row) == 64, (start, per_row)
