"""Choosing where a model's predict runs: inline on the event loop or in the thread pool.

A thread hop costs tens of microseconds and a GIL hand-off on every request, which dominates
for microsecond models; blocking the loop for long calls stalls every other request. So a
runtime that declares ``auto`` is timed on a one-row input right after loading, and runs
inline only when that call is cheaper than ``INLINE_BUDGET_S``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from serving.protocol.datatypes import dtype_for
from serving.runtime.base import Runtime

log = logging.getLogger("turnout.execution")

INLINE_BUDGET_S = 0.0005
_TRIALS = 5


def _one_row(runtime: Runtime) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in runtime.inputs:
        shape = tuple(1 if d < 0 else d for d in spec.shape) or (1,)
        if spec.datatype == "BYTES":
            inputs[spec.name] = np.full(shape, b"", dtype=object)
        else:
            inputs[spec.name] = np.zeros(shape, dtype=dtype_for(spec.datatype))
    return inputs


def resolve_execution(runtime: Runtime) -> str:
    """Set ``runtime.execution`` to ``inline`` or ``thread`` and return it."""
    wanted = runtime.settings.execution or runtime.execution
    if wanted != "auto":
        runtime.execution = wanted
        return wanted
    try:
        inputs = _one_row(runtime)
        runtime.predict(inputs, runtime.default_outputs)  # warm-up: first calls allocate
        best = float("inf")
        for _ in range(_TRIALS):
            started = time.perf_counter()
            runtime.predict(inputs, runtime.default_outputs)
            best = min(best, time.perf_counter() - started)
    except Exception as exc:  # a model that cannot take zeros: be safe, keep it off the loop
        log.info("model %s: timing on a zero row failed (%s); predicting in threads",
                 runtime.settings.name, exc)
        runtime.execution = "thread"
        return "thread"
    runtime.one_row_seconds = best
    runtime.execution = "inline" if best < INLINE_BUDGET_S else "thread"
    log.info("model %s version %s: one-row predict %.1f µs → %s", runtime.settings.name,
             runtime.settings.version, best * 1e6, runtime.execution)
    return runtime.execution
