"""Progress on the terminal: one line per finished trial, epochs as they happen.

On a terminal the epochs of the running trials share one status line that is rewritten in
place (``#4 epoch 7: log_loss=0.21 | #5 epoch 2: log_loss=0.48``); with ``verbose``, or when
the output is not a terminal and ``verbose`` is set, every epoch is a line of its own. Trial
lines look like::

    [ 3/20] trial 2   COMPLETE  log_loss=0.1672  learning_rate=0.31 max_depth=4  1.2s  best #2
    [ 4/20] trial 3   PRUNED    at step 4 (log_loss=0.5821)  learning_rate=0.011 max_depth=2

Every method may be called from several threads.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any, TextIO

from upstream.tuning.experiment import format_value


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


class Progress:
    """Silent; subclasses print."""

    def message(self, text: str) -> None:
        pass

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        pass

    def trial_step(self, number: int, step: int, metric: str, value: float | None) -> None:
        pass

    def trial_finished(self, number: int, state: str, *, value: float | None, metric: str,
                       params: Mapping[str, Any], seconds: float, step: int | None,
                       error: str, done: int, total: int, best: int | None) -> None:
        pass


class TerminalProgress(Progress):
    def __init__(self, out: TextIO | None = None, *, verbose: bool = False) -> None:
        self.out = out or sys.stdout
        self.verbose = verbose
        self.live = not verbose and bool(getattr(self.out, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._running: dict[int, str] = {}
        self._status = False

    def _write(self, text: str) -> None:
        with self._lock:
            if self._status:
                self.out.write("\r\033[K")
                self._status = False
            self.out.write(text + "\n")
            self._redraw()
            self.out.flush()

    def _redraw(self) -> None:
        if self.live and self._running:
            line = " | ".join(f"#{n} {s}" for n, s in sorted(self._running.items()))
            self.out.write(line[:200])
            self._status = True

    def message(self, text: str) -> None:
        self._write(text)

    def trial_started(self, number: int, params: Mapping[str, Any]) -> None:
        with self._lock:
            self._running[number] = "starting"
        if self.verbose:
            self._write(f"trial {number} started: {params_text(params)}")

    def trial_step(self, number: int, step: int, metric: str, value: float | None) -> None:
        shown = f"{metric}={value:.4g}" if value is not None else metric
        if self.verbose:
            self._write(f"trial {number} epoch {step}: {shown}")
            return
        if self.live:
            with self._lock:
                self._running[number] = f"epoch {step}: {shown}"
                if self._status:
                    self.out.write("\r\033[K")
                self._redraw()
                self.out.flush()

    def trial_finished(self, number: int, state: str, *, value: float | None, metric: str,
                       params: Mapping[str, Any], seconds: float, step: int | None,
                       error: str, done: int, total: int, best: int | None) -> None:
        with self._lock:
            self._running.pop(number, None)
        width = len(str(total))
        head = f"[{done:>{width}}/{total}] trial {number:<3} {state:<9}"
        if state == "COMPLETE":
            body = f"{metric}={value:.6g}" if value is not None else metric
        elif state == "PRUNED":
            body = f"at step {step}" + (f" ({metric}={value:.6g})" if value is not None else "")
        else:
            body = error or "failed"
        tail = f"  {params_text(params)}  {seconds:.1f}s"
        if best is not None:
            tail += f"  best #{best}"
        self._write(f"{head} {body}{tail}")
