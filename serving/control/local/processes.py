"""Child processes of ``turnout up`` that cannot outlive it, and ports that cannot collide.

Replicas and the router run in sessions of their own (a Ctrl-C reaches only the plane, which
drains them in order), so a ``kill -9`` of the plane would otherwise leave them running,
holding the public ports. Each child asks the kernel for SIGTERM when the plane dies
(``PR_SET_PDEATHSIG``), and the plane records their process ids so a later ``turnout up``
stops any that survived (a child started before this protection, or on a kernel without it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for children: SIGTERM when the parent exits, however it exits."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports, all bound at once while choosing (two separate
    choices may return the same port once the first socket is closed)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ours(pid: int) -> bool:
    """Whether ``pid`` is a live Turnout process (not a reused id of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"serving.cli" in cmdline


def stop_leftovers(pids: list[int], *, grace: float = 5.0) -> list[int]:
    """SIGTERM the processes of a plane that died, SIGKILL after ``grace``; returns those
    that were still running."""
    alive = [p for p in pids if p > 0 and p != os.getpid() and ours(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(ours(p) for p in alive):
        time.sleep(0.1)
    for pid in alive:
        if ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return alive
