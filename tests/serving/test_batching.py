"""Adaptive batching: rows-based limits, latency window, exact splitting, overload, isolation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.protocol.errors import Overloaded
from serving.runtime.settings import BatchingSettings
from serving.server.batching import AdaptiveBatcher


class Recorder:
    """A real computation (x * 2, row sums) that also records each merged call's row count."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate

    async def __call__(self, inputs, outputs):
        x = inputs["x"]
        self.batches.append(len(x))
        if self.gate is not None:
            await self.gate.wait()
        if (x < 0).any():
            raise ValueError("negative input")
        return {"double": x * 2, "total": x.sum(axis=1)}


def _batcher(predict, **settings) -> AdaptiveBatcher:
    return AdaptiveBatcher(predict=predict, settings=BatchingSettings(**settings))


def _rows(n: int, start: float) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n * 3, dtype=np.float64).reshape(n, 3)}


async def test_concurrent_mixed_sizes_split_back_exactly():
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=16, max_latency_ms=5)
    rng = np.random.default_rng(0)
    requests = [_rows(int(rng.integers(1, 8)), i * 100.0) for i in range(60)]
    results = await asyncio.gather(*(batcher.submit(r, ["double", "total"]) for r in requests))
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["double"], request["x"] * 2)
        np.testing.assert_array_equal(result["total"], request["x"].sum(axis=1))
    assert max(predict.batches) <= 16
    assert len(predict.batches) < 60  # requests really were merged
    assert sum(predict.batches) == sum(len(r["x"]) for r in requests)
    await batcher.close()


async def test_batches_close_on_rows_not_request_count():
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=8, max_latency_ms=200)
    await asyncio.gather(*(batcher.submit(_rows(3, i), ["double"]) for i in range(4)))
    assert predict.batches == [6, 6]  # 3+3 fits in 8; a third request of 3 would not
    await batcher.close()


async def test_a_lone_request_is_flushed_by_the_latency_window():
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=64, max_latency_ms=20)
    result = await asyncio.wait_for(batcher.submit(_rows(2, 0), ["total"]), 5)
    np.testing.assert_array_equal(result["total"], [3.0, 12.0])
    assert predict.batches == [2]
    await batcher.close()


async def test_requests_that_differ_are_not_merged():
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=64, max_latency_ms=50)
    wide = {"x": np.ones((2, 5))}
    a, b, c = await asyncio.gather(batcher.submit(_rows(2, 0), ["double"]),
                                   batcher.submit(wide, ["double"]),
                                   batcher.submit(_rows(1, 0), ["total"]))
    assert a["double"].shape == (2, 3) and b["double"].shape == (2, 5) and "total" in c
    assert sorted(predict.batches) == [1, 2, 2]
    await batcher.close()


async def test_full_batch_bypasses_the_queue():
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=4, max_latency_ms=1000)
    result = await asyncio.wait_for(batcher.submit(_rows(10, 0), ["double"]), 1)
    assert result["double"].shape == (10, 3)
    assert predict.batches == [10]


async def test_queue_full_is_overloaded():
    gate = asyncio.Event()
    predict = Recorder(gate)
    batcher = _batcher(predict, max_batch_size=2, max_latency_ms=0, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit(_rows(1, 0), ["double"]))
    await asyncio.sleep(0.05)  # first request is inside predict, held by the gate
    queued = [asyncio.ensure_future(batcher.submit(_rows(1, i), ["double"])) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="batching queue is full"):
        await batcher.submit(_rows(1, 3), ["double"])
    gate.set()
    for fut in [running, *queued]:
        assert (await fut)["double"].shape == (1, 3)
    await batcher.close()


async def test_request_queued_too_long_times_out():
    gate = asyncio.Event()
    predict = Recorder(gate)
    batcher = _batcher(predict, max_batch_size=1 + 1, max_latency_ms=0, queue_timeout_ms=20)
    first = asyncio.ensure_future(batcher.submit(_rows(1, 0), ["double"]))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(batcher.submit(_rows(1, 1), ["double"]))
    await asyncio.sleep(0.1)  # second waits in the queue past its timeout
    gate.set()
    assert (await first)["double"].shape == (1, 3)
    with pytest.raises(Overloaded, match="waited over 20 ms"):
        await second
    await batcher.close()


async def test_one_failing_request_does_not_fail_its_neighbours():
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=32, max_latency_ms=30)
    bad = {"x": -np.ones((2, 3))}
    results = await asyncio.gather(batcher.submit(_rows(2, 0), ["double"]),
                                   batcher.submit(bad, ["double"]),
                                   batcher.submit(_rows(3, 10), ["double"]),
                                   return_exceptions=True)
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0]["double"], _rows(2, 0)["x"] * 2)
    np.testing.assert_array_equal(results[2]["double"], _rows(3, 10)["x"] * 2)
    assert predict.batches[0] == 7  # merged first, then retried one by one
    await batcher.close()
