"""``torch.export`` programs compiled to ONNX, kept only where ONNX Runtime is faster.

A deep MLP (256 -> 3 x 1536 -> 10, the harness's ``torch`` model) runs 35% faster per row in
ONNX Runtime than in PyTorch on one core (batches of 64: 19 vs 26 ms; one row: 1.8 vs 2.6 ms).
PyTorch's own exporter (``torch.onnx.export(program, dynamo=True)``, which needs onnxscript)
converts the program; the copy is verified on probe rows (values within 1e-4 relative / 1e-5
absolute: float32 kernels sum in a different order) and timed against PyTorch on a batch in
interleaved rounds; it serves only when it answers alike and is at least 5% faster. The verdict
is cached with the artifact's digest either way (``runtimes/compiled.py``), so a later start
opens the ONNX copy without importing torch, or goes straight to torch without exporting again.

Compiled: programs with one tensor input whose sizes other than the batch are fixed, and tensor
outputs (``output-0..n``) likewise, up to 256 MiB unless ``compile: onnx`` insists (exporting
costs seconds per tens of MiB and memory several times the weights); others, and TorchScript
files, are served by PyTorch.
``compile: none`` opts out; ``compile: onnx`` warns when the program is not compiled.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import compiled
from runtimes.compiled import CompiledModel, Tolerance
from serving.protocol.types import TensorSpec

DISTS = ("torch", "onnxscript")
TOLERANCE = Tolerance(rtol=1e-4, atol=1e-5)
SCALES = (0.1, 1.0, 10.0)
FASTER = 0.95  # the copy must take at most this share of PyTorch's time on a batch
# compile: auto exports programs up to this size at load: exporting takes seconds per tens of
# MiB and memory several times the weights, which a large model should not pay unasked.
AUTO_MAX_BYTES = 256 * 2**20
_TIMED_ROWS = 32
_ROUNDS = 5
_PROBE_ELEMENTS = 1 << 21  # probe rows are capped at about 8 MiB of float32
_EXPORTER_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")


def load_cached(artifact: Path) -> CompiledModel | None:
    return compiled.load_cached(artifact, DISTS)


def compile_verified(program: Any, artifact: Path, *, inputs: list[TensorSpec],
                     outputs: list[TensorSpec],
                     reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                     cache: bool = True, insist: bool = False) -> tuple[CompiledModel | None, str]:
    """Export, verify against ``reference`` (the runtime's own forward), time, and cache.
    ``insist`` (``compile: onnx``) lifts the size limit of the default mode."""
    size = artifact.stat().st_size
    if not insist and size > AUTO_MAX_BYTES:
        return None, (f"the program is {size / 2**20:,.0f} MiB, over the "
                      f"{AUTO_MAX_BYTES / 2**20:,.0f} MiB that compile: auto exports at load "
                      "(compile: onnx exports it anyway)")
    refused = compiled.refused_before(artifact, DISTS) if cache else ""
    if refused:
        return None, f"{refused} (an earlier start's verdict)"
    if program is None:
        return None, "only torch.export programs (.pt2) are compiled, not TorchScript"
    if len(inputs) != 1 or inputs[0].datatype != "FP32" or -1 in inputs[0].shape[1:]:
        return None, "only programs with one FP32 input of fixed sizes besides the batch"
    if any(-1 in spec.shape[1:] for spec in outputs):
        return None, "an output's sizes besides the batch vary"
    model, reason = _export_and_verify(program, artifact, inputs, outputs, reference, cache)
    if model is None and cache:
        compiled.remember_refusal(artifact, DISTS, reason)
    return model, reason


def _export_and_verify(program: Any, artifact: Path, inputs: list[TensorSpec],
                       outputs: list[TensorSpec],
                       reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                       cache: bool) -> tuple[CompiledModel | None, str]:
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it; say so plainly
        import torch
    except ImportError as exc:
        return None, f"{exc.name} is not installed (pip install 'turnout[torch]')"
    try:
        with warnings.catch_warnings(), _quiet(_EXPORTER_LOGGERS):
            warnings.simplefilter("ignore")
            exported = torch.onnx.export(program, dynamo=True, verbose=False)
        onnx_bytes = exported.model_proto.SerializeToString()
    except Exception as exc:  # the exporter raises many types for what it cannot convert
        return None, f"torch.onnx cannot export this program: {type(exc).__name__}: {exc}"
    meta = {"methods": {s.name: [i, None] for i, s in enumerate(outputs)},
            "converter": "torch.onnx", "estimator": "torch.export program",
            "accepts_non_finite": True,
            "inputs": [compiled.spec_json(s) for s in inputs],
            "outputs": [compiled.spec_json(s) for s in outputs]}
    rows = _probe_rows(inputs[0])
    return compiled.store_verified(
        onnx_bytes, meta, artifact, DISTS, reference, rows, TOLERANCE, cache=cache,
        accept=lambda candidate: _slower(candidate, reference, rows[:_TIMED_ROWS]))


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """The exporter's INFO chatter (optimizer passes, optional torchvision ops) kept out of the
    server's log; its errors still show."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _probe_rows(spec: TensorSpec) -> np.ndarray:
    per_row = int(np.prod(spec.shape[1:], dtype=np.int64)) or 1
    count = max(8, min(256, _PROBE_ELEMENTS // per_row // len(SCALES)))
    rng = np.random.default_rng(0)
    blocks = [np.zeros((1, *spec.shape[1:]))] + [
        rng.normal(0.0, scale, (count, *spec.shape[1:])) for scale in SCALES]
    return np.concatenate(blocks).astype(np.float32)


def _slower(candidate: CompiledModel, reference: Callable[[np.ndarray], Any],
            rows: np.ndarray) -> str:
    """Why the copy is not worth serving (not ``FASTER`` than PyTorch on a batch), or ""."""
    names = [spec.name for spec in candidate.outputs]
    best = {"torch": float("inf"), "onnx": float("inf")}
    runs = {"torch": lambda: reference(rows), "onnx": lambda: candidate.predict(rows, names)}
    for run in runs.values():
        run()  # warm-up
    for _ in range(_ROUNDS):  # interleaved, so a slow moment hits both alike
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    if best["onnx"] > FASTER * best["torch"]:
        return (f"ONNX Runtime is not faster ({best['onnx'] * 1e3:.2f} ms vs PyTorch's "
                f"{best['torch'] * 1e3:.2f} ms for {len(rows)} rows)")
    return ""
