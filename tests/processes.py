"""Child processes of the tests: ``python -m serving.cli ARGS`` with its output in a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

PLUGINS = Path(__file__).parent / "plugins"  # the test runtimes (turnout_test_runtimes)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the test runtimes importable, plus ``env``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PLUGINS), os.environ.get("PYTHONPATH", "")]), **(env or {})}


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
