"""Automatic batching, decided at load: on where merging rows across requests pays.

Why: a framework's fixed per-call cost (hundreds of µs for scikit-learn or XGBoost) is paid
once per predict, so under concurrency merging what is waiting into one call multiplies
throughput — but only for models timed at load (runtimes declaring ``execution: auto``) and
slow enough to predict in threads (one row over the inline budget, under 20 ms: a microsecond
model would pay more for the hop to the batcher than it saves) and
whose cost per row falls in a batch. Right after load the model is timed on 1 row and on
batches of 8..64 rows; batching is turned on when 32 rows cost under half of 32 single calls,
with the largest size whose cost per row still falls by 5%, and ``max_latency_ms: 0``: like
Triton's dynamic batcher with no queue delay, a request that finds the batcher idle runs at
once and only what is already waiting is merged.

Opt-outs: ``batching: none`` in a model's settings, ``turnout serve --no-auto-batching`` or
``TURNOUT_AUTO_BATCHING=0`` for the server; explicit ``batching`` settings or
``--max-batch-size`` are used as given, and a model with ``max_queue`` set keeps unbatched
admission.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from serving.runtime.base import Runtime
from serving.runtime.settings import BatchingSettings
from serving.server.execution import _one_row

log = logging.getLogger("turnout.batching")

ENV = "TURNOUT_AUTO_BATCHING"
SIZES = (8, 16, 32, 64)
PAYS = 0.5           # 32 rows must cost under half of 32 single calls
STILL_FALLING = 0.95  # a larger size must cut the cost per row by 5%
_MIN_ROUNDS, _MAX_ROUNDS = 5, 10  # timed rounds over every size (see _per_row_costs)
_ROUNDS_S = 0.5      # more rounds than the least only while timing has taken under this
_BUDGET_S = 2.0      # the warm-up sweep stops early for a slow model
MAX_ONE_ROW_S = 0.02  # slower models are not timed in batches at load


def enabled_by_env() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def decide(runtime: Runtime) -> BatchingSettings | None:
    """The batching settings to serve ``runtime`` with, or None when batching does not pay."""
    name = f"model {runtime.settings.name} version {runtime.settings.version}"
    one = getattr(runtime, "one_row_seconds", None)
    if runtime.settings.max_queue is not None:
        return None  # admission for unbatched threads was set by hand: keep it
    if one is None or runtime.execution != "thread" or not runtime.inputs:
        log.info("%s: automatic batching off (predicts inline, not timed at load, or inputs "
                 "undeclared)", name)
        return None
    if one > MAX_ONE_ROW_S:
        log.info("%s: automatic batching off (one row takes %.0f ms: too slow to time batches "
                 "at load; set batching)", name, one * 1e3)
        return None
    if any(not spec.shape or spec.shape[0] != -1 or -1 in spec.shape[1:]
           for spec in runtime.inputs):
        log.info("%s: automatic batching off (inputs have no batch dimension)", name)
        return None
    try:
        per_row = _per_row_costs(runtime)
    except Exception as exc:  # a model that cannot take zero rows in a batch: leave it alone
        log.info("%s: automatic batching off (timing a batch failed: %s)", name, exc)
        return None
    at32 = per_row.get(32, per_row[max(per_row)])
    if at32 >= PAYS * one:
        log.info("%s: automatic batching off: one row %.0f µs, %.0f µs per row in a batch",
                 name, one * 1e6, at32 * 1e6)
        return None
    size = chosen_size(per_row)
    log.info("%s: automatic batching on: one row %.0f µs, %.0f µs per row at %d rows; "
             "max_batch_size %d, no added wait", name, one * 1e6, per_row[size] * 1e6, size, size)
    return BatchingSettings(max_batch_size=size, max_latency_ms=0.0)


def chosen_size(per_row: dict[int, float]) -> int:
    """The largest timed size whose cost per row is still ``STILL_FALLING`` of the last."""
    size = SIZES[0]
    for bigger in SIZES[1:]:
        if bigger in per_row and per_row[bigger] < STILL_FALLING * per_row[size]:
            size = bigger
    return size


def _per_row_costs(runtime: Runtime) -> dict[int, float]:
    """Seconds per row at each of ``SIZES``: the best of interleaved rounds.

    Rounds take every size in turn, so a slow moment (another process on the core, a neighbour
    on the memory bus) slows each size in its round alike; timing one size's trials back to
    back let such a moment land on one size only, and a deep MLP whose 64-row batches cost 11%
    less per row than 32-row ones was served at 32 in two starts of five.
    """
    row = _one_row(runtime)
    outputs = runtime.default_outputs
    spent = time.perf_counter()
    batches = {}
    for size in SIZES:  # a warm-up call each; a slow model stops the sweep early
        batch = {k: np.repeat(v, size, axis=0) for k, v in row.items()}
        runtime.predict(batch, outputs)
        batches[size] = batch
        if time.perf_counter() - spent > _BUDGET_S:
            break
    best = dict.fromkeys(batches, float("inf"))
    for done in range(1, _MAX_ROUNDS + 1):
        for size, batch in batches.items():
            started = time.perf_counter()
            runtime.predict(batch, outputs)
            best[size] = min(best[size], time.perf_counter() - started)
        if done >= _MIN_ROUNDS and time.perf_counter() - spent > _ROUNDS_S:
            break
    return {size: seconds / size for size, seconds in best.items()}
