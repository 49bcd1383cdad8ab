"""Child processes of the tests: ``python -m serving.cli ARGS`` with its output in a file."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PLUGINS = Path(__file__).parent / "plugins"  # the test runtimes (turnout_test_runtimes)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the test runtimes importable, plus ``env``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PLUGINS), os.environ.get("PYTHONPATH", "")]), **(env or {})}


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int, prctl: Any) -> None:
    """In the child, before exec: SIGTERM when ``parent`` goes (now, if it already went)."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def children_die_with_this_process() -> None:
    """Every child this process starts from its main thread gets SIGTERM when it dies (Linux's
    ``PR_SET_PDEATHSIG``), so a test run that crashes leaves no servers, routers or API servers
    running to break the next run. Only from the main thread: the signal follows the thread
    that started the child, and pytest's main thread lives as long as the run. A child given
    its own ``preexec_fn`` keeps it."""
    if not sys.platform.startswith("linux") or getattr(subprocess.Popen, "_dies_with_us", False):
        return
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    original = subprocess.Popen.__init__

    @functools.wraps(original)
    def init(self: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("preexec_fn") is None and threading.current_thread() is threading.main_thread():
            kwargs["preexec_fn"] = functools.partial(_die_with, os.getpid(), prctl)
        original(self, *args, **kwargs)

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
    subprocess.Popen._dies_with_us = True  # type: ignore[attr-defined]


def terminate(proc: subprocess.Popen, grace: float = 30) -> int:
    """SIGTERM (the drain a real stop gets), SIGKILL after ``grace`` seconds; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class CliProcess:
    """``python -m serving.cli ARGS`` with its output in ``log_path``; stopped with SIGTERM."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args, self.log_path = args, log_path
        self.env = child_env(env)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.cli", *args], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, check: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
        """Until ``check()`` is true (connection errors count as not yet); fails at once if
        the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what}: exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if check():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not within {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        code = terminate(self.proc)
        self._log.close()
        return code
