"""Adaptive batching: merge concurrent requests for one model into fewer, larger predict calls.

Concurrency design: one asyncio task per batcher (started lazily on the running loop) drains
a FIFO of pending requests. A batch closes when it holds ``max_batch_size`` rows or when its
first request has waited ``max_latency_ms``. Only requests that agree on input names, dtypes,
trailing shapes and requested outputs are merged, in arrival order. While one batch runs in
the thread pool the next one fills, so batch size adapts to load.

After a batch the batcher expects as many requests back as it just answered plus those that
waited meanwhile (clients send their next request when they have the answer). Until that many
are queued it lets loop steps pass (``SETTLE_STEPS`` at most, no timer) before it takes the
next batch, so the answers go out and the clients' next requests join. Without that,
closed-loop clients split into cohorts that take turns: two half-size batches over gRPC (a
one-row torch MLP on one core ran 4,100-4,300 -> 4,800-5,100 rows/s at c=64 with it), and over
HTTP/1.1, whose connections are read one by one, a full batch and a batch of the first one or
two requests back, at a one-row call's full cost (REST at c=64: 9,870-10,030 -> 11,050 rows/s,
mean batch 33 -> 63; c=8: 4,050 -> 5,250 requests/s). A lone client (the last batch answered
one request) never waits.

Outputs are split back by row offsets and each split is checked to hold exactly its request's
rows. If a merged call fails, each request is retried alone so one bad request cannot fail its
neighbours.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from serving.protocol.errors import ModelFailed, Overloaded
from serving.runtime.settings import BatchingSettings
from serving.transport import tracing

Arrays = dict[str, np.ndarray]
# Loop steps the batcher lets pass at most for the requests it expects (see the module
# docstring): enough for the answers to be written and the clients' next requests to be read,
# decoded and queued. The loop gRPC engine needs about 3; REST over HTTP/1.1 more (uvicorn's
# protocol and the ASGI fast path); it stops early once they are queued. An idle step costs a
# few µs.
SETTLE_STEPS = 8
Predict = Callable[[Arrays, Sequence[str]], Awaitable[Arrays]]
# Called once per merged batch with its row count and each request's seconds in the queue.
Observe = Callable[[int, list[float]], None]


@dataclass(slots=True)
class _Pending:
    inputs: Arrays
    outputs: tuple[str, ...]
    rows: int
    future: asyncio.Future[Arrays]
    enqueued: float
    key: tuple[object, ...] = field(default=())
    trace: Any = None  # with tracing on: the request's context and its wall-clock arrival
    since: int = 0


def _merge_key(inputs: Arrays, outputs: tuple[str, ...]) -> tuple[object, ...]:
    """What requests must agree on to share a batch: outputs, and each input's name, dtype
    and trailing shape. One input (the usual case) skips the sort: this runs per request."""
    if len(inputs) == 1:
        for name, array in inputs.items():
            return (outputs, name, array.dtype, array.shape[1:])
    return (outputs, tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items())))


class AdaptiveBatcher:
    def __init__(self, *, predict: Predict, settings: BatchingSettings,
                 observe: Observe | None = None) -> None:
        self._predict = predict
        self._settings = settings
        self._observe = observe or (lambda rows, waits: None)
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: Any = None  # the task's loop, once there is a task

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        """Queue one request and wait for its share of a batch's outputs."""
        future = self.enqueue(inputs, outputs)
        if future is None:
            return await self._predict(inputs, outputs)  # already a full batch on its own
        return await future

    def enqueue(self, inputs: Arrays, outputs: Sequence[str]) -> asyncio.Future[Arrays] | None:
        """:meth:`submit` without a coroutine: the future of the request's share of its batch
        (callers that answer from a callback save a task per request); None for a request
        that is a full batch on its own, which :meth:`submit` predicts alone."""
        rows = next(iter(inputs.values())).shape[0]
        if rows >= self._settings.max_batch_size:
            return None
        if len(self._queue) >= self._settings.max_queue_size:
            raise Overloaded(f"batching queue is full ({self._settings.max_queue_size} requests); "
                             "retry later")
        task = self._task
        if task is None or task.done():
            self._loop = loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run())
        else:
            loop = self._loop  # the task's (asked once per task: this runs per request)
        key_outputs = tuple(outputs)
        pending = _Pending(inputs, key_outputs, rows, loop.create_future(), time.monotonic(),
                           _merge_key(inputs, key_outputs))
        if tracing.ON:
            pending.trace, pending.since = tracing.current_context(), tracing.now_ns()
        self._queue.append(pending)
        self._rows += rows
        assert self._wakeup is not None
        self._wakeup.set()
        return pending.future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Overloaded("model is unloading"))

    async def _run(self) -> None:
        assert self._wakeup is not None
        limit = self._settings.max_batch_size
        expected = 0  # requests likely back soon: the last batch's plus those that waited
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            steps = 0
            while len(self._queue) < expected and self._rows < limit and steps < SETTLE_STEPS:
                await asyncio.sleep(0)
                steps += 1
            deadline = self._queue[0].enqueued + self._settings.max_latency_ms / 1000
            while self._rows < limit and (remaining := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(limit)
            if batch:
                await self._execute(batch)
                expected = len(batch) + len(self._queue)

    def _take(self, limit: int) -> list[_Pending]:
        """The oldest compatible requests that fit in ``limit`` rows; expired ones are refused."""
        timeout = self._settings.queue_timeout_ms
        now = time.monotonic()
        batch: list[_Pending] = []
        rows = 0
        skipped: list[_Pending] = []
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # the caller went away
                self._rows -= pending.rows
                continue
            if timeout is not None and now - pending.enqueued > timeout / 1000:
                self._rows -= pending.rows
                pending.future.set_exception(Overloaded(
                    f"request waited over {timeout:g} ms in the batching queue"))
                continue
            if batch and (pending.key != batch[0].key or rows + pending.rows > limit):
                skipped.append(pending)
                if rows + pending.rows > limit:
                    break
                continue
            batch.append(pending)
            rows += pending.rows
            self._rows -= pending.rows
        self._queue.extendleft(reversed(skipped))  # keep arrival order for the next batch
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        if tracing.ON and batch[0].trace is not None:
            return await self._traced(batch)
        return await self._execute_untraced(batch)

    async def _traced(self, batch: list[_Pending]) -> None:
        """Each request's ``queue wait`` (arrival to this batch), then one ``batch`` span under
        the first request, linked to every request it merged."""
        now = tracing.now_ns()
        links = []
        for pending in batch:
            if pending.trace is not None:
                tracing.record("queue wait", context=pending.trace, start_time=pending.since,
                               end_time=now, attributes={"turnout.batch.rows": pending.rows})
                links.append(tracing.link(tracing.span_context_of(pending.trace)))
        with tracing.span("batch", context=batch[0].trace, links=links, attributes={
                "turnout.batch.size": sum(p.rows for p in batch),
                "turnout.batch.requests": len(batch)}):
            await self._execute_untraced(batch)

    async def _execute_untraced(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        self._observe(sum(p.rows for p in batch), [started - p.enqueued for p in batch])
        merged = {name: np.concatenate([p.inputs[name] for p in batch])
                  for name in batch[0].inputs} if len(batch) > 1 else batch[0].inputs
        try:
            result = await self._predict(merged, batch[0].outputs)
            parts = _split(result, [p.rows for p in batch])
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            await asyncio.gather(*(self._alone(p) for p in batch))
            return
        for pending, part in zip(batch, parts, strict=True):
            if not pending.future.done():
                pending.future.set_result(part)

    async def _alone(self, pending: _Pending) -> None:
        try:
            result = await self._predict(pending.inputs, pending.outputs)
        except Exception as exc:
            _fail(pending, exc)
        else:
            if not pending.future.done():
                pending.future.set_result(result)


def _fail(pending: _Pending, exc: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)


def _split(result: Arrays, sizes: list[int]) -> list[Arrays]:
    """Cut merged outputs back into per-request outputs, exactly by row counts."""
    total = sum(sizes)
    for name, array in result.items():
        if np.ndim(array) == 0 or len(array) != total:
            raise ModelFailed(f"batched output '{name}' has {np.shape(array)[:1]} rows for "
                              f"{total} input rows")
    # Python ints, not np.cumsum: numpy's scalar slicing and list wrapping cost more than
    # the arithmetic for a batch of one-row requests (py-spy: 4% of the loop at c=64).
    ends = list(accumulate(sizes))
    items = list(result.items())
    return [{name: array[end - size:end] for name, array in items}
            for size, end in zip(sizes, ends, strict=True)]
