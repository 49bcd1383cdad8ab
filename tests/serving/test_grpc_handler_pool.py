"""The threaded gRPC engine's handler pool: threads start as calls arrive and none waits, up to
a limit that can be raised once (for a batched model's waiters); results and errors reach the
caller's future; a shut-down pool refuses work."""

from __future__ import annotations

import threading
import time

import pytest

from serving.server.grpc.threaded import HandlerPool


def _hold(pool: HandlerPool, n: int) -> tuple[threading.Event, list]:
    gate = threading.Event()
    return gate, [pool.submit(gate.wait, 10) for _ in range(n)]


def test_threads_start_up_to_the_limit_and_calls_queue_beyond_it() -> None:
    pool = HandlerPool(4, "t")
    gate, held = _hold(pool, 10)
    assert pool.threads == 4
    deadline = time.monotonic() + 5
    while sum(f.running() for f in held) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(f.running() for f in held) == 4
    gate.set()
    assert all(f.result(5) for f in held)
    pool.shutdown()


def test_raising_the_limit_lets_it_grow_even_after_a_burst() -> None:
    pool = HandlerPool(4, "t")
    for _ in range(3):  # bursts leave waiting threads behind, as inline gRPC traffic does
        gate, held = _hold(pool, 8)
        gate.set()
        [f.result(5) for f in held]
    assert pool.threads == 4
    pool.allow(20)
    gate, held = _hold(pool, 20)
    assert pool.threads == 20
    gate.set()
    assert all(f.result(5) for f in held)
    pool.allow(10)  # never lowers
    gate, held = _hold(pool, 20)
    gate.set()
    [f.result(5) for f in held]
    assert pool.threads == 20
    pool.shutdown()


def test_waiting_threads_take_sequential_calls() -> None:
    pool = HandlerPool(8, "t")
    for i in range(50):
        assert pool.submit(lambda v: v * 2, i).result(5) == i * 2
    assert pool.threads <= 2  # a waiting thread takes the next call; none started per call
    pool.shutdown()


def test_errors_reach_the_future_and_a_shut_down_pool_refuses() -> None:
    pool = HandlerPool(2, "t")

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        pool.submit(boom).result(5)
    assert pool.submit(lambda: 1).result(5) == 1  # the thread survived
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: 1)
