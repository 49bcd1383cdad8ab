"""The test harness itself: a test run that dies leaves none of its children running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# A stand-in for pytest: installs the harness's rule, starts a long-lived child (as a server
# fixture would), prints its pid, then waits to be killed without any chance to clean up.
RUN = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from tests.processes import children_die_with_this_process
children_die_with_this_process()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_killed_test_run_takes_its_children_with_it() -> None:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.Popen([sys.executable, "-c", RUN, str(root)], stdout=subprocess.PIPE,
                           text=True)
    try:
        child = int(run.stdout.readline())  # type: ignore[union-attr]
        assert alive(child)
        run.send_signal(signal.SIGKILL)  # as a segfault ends a run: no cleanup runs
        run.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the child outlived its killed parent"
    finally:
        run.kill()
        run.wait()
