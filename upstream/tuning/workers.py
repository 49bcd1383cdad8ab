"""Trial worker processes: each runs trials one after another, for as long as the tuner lives.

The tuner (one thread per parallel trial) hands a worker a trial's arguments over a pipe. The
worker trains (:func:`upstream.tuning.trial.run_trial`) and, after every reported epoch, sends
the metrics and waits for the answer: go on, or prune (median stopping). A worker is a fresh
``spawn`` process, so a trial never shares a framework's state, threads or memory with the
tuner; it imports its framework once and keeps it for the next trials.

A worker exits when the pipe closes: the tuner finished, or was killed, mid-trial or not.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One thread per worker: parallel trials share the machine's cores (set before torch loads).
_THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class _Pruned(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"pruned at step {step}")
        self.step = step


def _serve(conn: Any) -> None:
    """The worker process's loop (the target of the spawned process)."""
    for key, value in _THREADS_ENV.items():
        os.environ.setdefault(key, value)
    import logging
    import warnings

    logging.basicConfig(level=logging.ERROR)  # "no ONNX copy" and the like stay quiet
    warnings.simplefilter("ignore")
    from upstream.tuning.trial import parse_trial_argv, run_trial

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        argv, out_dir, keep = message
        out = Path(out_dir)
        try:
            args = parse_trial_argv(argv)

            def on_step(step: int, metrics: dict[str, float]) -> None:
                conn.send(("step", step, metrics))
                if conn.recv() == "prune":
                    raise _Pruned(step)

            result = run_trial(args, out, on_step)
            conn.send(("done", dict(result.metrics), dict(result.params)))
        except _Pruned as pruned:
            conn.send(("pruned", pruned.step))
        except (EOFError, BrokenPipeError, OSError):
            return
        except Exception as exc:  # the trial failed; the worker goes on
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        finally:
            if not keep:
                shutil.rmtree(out, ignore_errors=True)


@dataclass
class Outcome:
    """How a trial ended: ``state`` done / pruned / error / lost (the worker died)."""

    state: str
    metrics: dict[str, float] | None = None
    params: dict[str, Any] | None = None
    step: int | None = None
    error: str = ""
    detail: str = ""


class Worker:
    """One spawned worker process and its end of the pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True,
                                       name="turnout-trial-worker")
        self.process.start()
        child.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def run(self, argv: list[str], out_dir: Path, on_step: Callable[[int, dict[str, float]], bool],
            *, keep: bool = False) -> Outcome:
        """Run one trial; ``on_step(step, metrics)`` returns True to prune it."""
        try:
            self.conn.send((list(argv), str(out_dir), keep))
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "step":
                    prune = on_step(int(message[1]), dict(message[2]))
                    self.conn.send("prune" if prune else "go")
                elif kind == "done":
                    return Outcome("done", metrics=message[1], params=message[2])
                elif kind == "pruned":
                    return Outcome("pruned", step=int(message[1]))
                else:
                    return Outcome("error", error=message[1], detail=message[2])
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            return Outcome("lost", error=f"the trial's worker process died (exit code {code})")

    def close(self, *, kill: bool = False) -> None:
        if kill and self.process.is_alive():
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                pass
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


class Pool:
    """``size`` workers, started together (their start-up, mostly imports, overlaps); a
    worker that died is replaced when it is handed back."""

    def __init__(self, size: int) -> None:
        self._free = [Worker() for _ in range(size)]
        self._all = list(self._free)
        self._lock = threading.Condition()
        self._closed = False

    def acquire(self) -> Worker:
        with self._lock:
            while not self._free:
                self._lock.wait()
            return self._free.pop()

    def release(self, worker: Worker) -> None:
        with self._lock:
            if self._closed:
                return
            if not worker.alive():
                worker.close(kill=True)
                self._all.remove(worker)
                worker = Worker()
                self._all.append(worker)
            self._free.append(worker)
            self._lock.notify()

    def close(self, *, kill: bool = False) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for worker in workers:
            worker.close(kill=kill)
