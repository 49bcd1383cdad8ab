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
from collections.abc import Collection
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for children: SIGTERM when the parent exits, however it exits."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct loopback ports, all bound at once while choosing (two separate
    choices may return the same port once the first socket is closed), none of ``avoid``:
    ports promised to a process that has not bound them yet (the router's public ports)."""
    sockets, chosen = [], []
    try:
        while len(chosen) < count:
            sock = socket.socket()
            sockets.append(sock)  # an avoided port stays bound too, so the next bind differs
            sock.bind(("127.0.0.1", 0))
            if (port := int(sock.getsockname()[1])) not in avoid:
                chosen.append(port)
        return chosen
    finally:
        for sock in sockets:
            sock.close()


def listening_socket(avoid: Collection[int] = ()) -> socket.socket:
    """A loopback socket bound now to a free port other than ``avoid``, for a server to
    adopt: choosing a port and binding it later leaves a gap in which another process (or
    this plane's next choice) may take it."""
    held = []
    try:
        while True:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] not in avoid:
                return sock
            held.append(sock)
    finally:
        for sock in held:
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
