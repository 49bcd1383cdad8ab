"""Adaptive batching: rows-based limits, latency window, exact splitting, overload, isolation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.protocol.errors import Overloaded
from serving.runtime.settings import BatchingSettings
from serving.server.batching import SETTLE_STEPS, AdaptiveBatcher


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


async def test_closed_loop_clients_that_start_apart_end_up_in_one_batch():
    """Two cohorts of clients, the second arriving while the first one's batch runs: after a
    batch the batcher lets its answers go out first, so the first cohort's next requests join
    the second's instead of the two taking turns in half-size batches."""

    class Slow(Recorder):
        async def __call__(self, inputs, outputs):
            self.batches.append(len(inputs["x"]))
            await asyncio.sleep(0.01)  # the model's time on the batch
            return {"double": inputs["x"] * 2}

    predict = Slow()
    batcher = _batcher(predict, max_batch_size=64, max_latency_ms=0)

    async def client(first: int, start_after: float) -> None:
        await asyncio.sleep(start_after)
        for i in range(12):
            rows = _rows(1, first + i)
            result = await batcher.submit(rows, ["double"])
            np.testing.assert_array_equal(result["double"], rows["x"] * 2)
            await asyncio.sleep(0)  # reading and decoding the client's next request

    await asyncio.gather(*(client(100 * c, 0.0) for c in range(8)),
                         *(client(100 * c, 0.005) for c in range(8, 16)))
    assert sum(predict.batches) == 16 * 12
    # the second cohort came while the first batch ran; from the next batch on, every client
    # is in every batch but at the ends (taking turns would make every batch 8)
    assert predict.batches[0] == 8 and set(predict.batches) == {8, 16}
    assert predict.batches.count(16) >= 10
    await batcher.close()


async def test_a_batch_whose_clients_come_back_one_step_apart_stays_one_batch():
    """Closed-loop clients all in one batch, their next requests arriving over a few loop
    steps (HTTP/1.1 connections are read one by one): the first to come back does not run
    alone while the rest are on their way; the batcher waits (a few loop steps at most) until
    as many requests as the last batch answered are queued."""

    class Slow(Recorder):
        async def __call__(self, inputs, outputs):
            self.batches.append(len(inputs["x"]))
            await asyncio.sleep(0.005)
            return {"double": inputs["x"] * 2}

    predict = Slow()
    batcher = _batcher(predict, max_batch_size=64, max_latency_ms=0)

    async def client(index: int) -> None:
        for i in range(10):
            rows = _rows(1, 1000 * index + i)
            result = await batcher.submit(rows, ["double"])
            np.testing.assert_array_equal(result["double"], rows["x"] * 2)
            for _ in range(index % 4):  # this client's turnaround, in loop steps
                await asyncio.sleep(0)

    await asyncio.gather(*(client(c) for c in range(16)))
    assert sum(predict.batches) == 16 * 10
    assert predict.batches == [16] * 10  # never a lone early returner, never a split cohort
    await batcher.close()


async def test_a_lone_client_never_waits_for_company():
    """At concurrency 1 each batch answers one request, so one queued request is all the
    batcher expects: it runs at once, without the settle steps (counted here in loop steps
    per request, against a ticker task that counts every step)."""
    predict = Recorder()
    batcher = _batcher(predict, max_batch_size=64, max_latency_ms=0)
    steps = 0

    async def ticker() -> None:
        nonlocal steps
        while True:
            await asyncio.sleep(0)
            steps += 1

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    for i in range(50):
        await batcher.submit(_rows(1, i), ["double"])
    per_request = steps / 50
    ticking.cancel()
    assert predict.batches == [1] * 50
    assert per_request < SETTLE_STEPS / 2, per_request
    await batcher.close()
