"""Ports that cannot collide, and leftovers of a dead plane found and stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from serving.control.local import processes
from serving.control.local.processes import free_ports, listening_socket, ours, stop_leftovers


def test_ports_chosen_together_are_distinct() -> None:
    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8


class ScriptedKernel:
    """Sockets whose ``bind(0)`` returns the ports of a script: the kernel handing out a
    port that is promised elsewhere, on demand."""

    def __init__(self, ports: list[int]) -> None:
        self.ports: Iterator[int] = iter(ports)
        self.open: list[ScriptedSocket] = []

    def __call__(self, *args: object) -> ScriptedSocket:
        sock = ScriptedSocket(self)
        self.open.append(sock)
        return sock


class ScriptedSocket:
    def __init__(self, kernel: ScriptedKernel) -> None:
        self.kernel, self.port, self.closed = kernel, 0, False

    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        assert address == ("127.0.0.1", 0)
        self.port = next(self.kernel.ports)

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def close(self) -> None:
        self.closed = True


def test_ports_promised_elsewhere_are_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel offers the router's public port 41001 first, then a port twice
    kernel = ScriptedKernel([41001, 41003, 41001, 41005, 41007])
    monkeypatch.setattr(processes.socket, "socket", kernel)
    assert free_ports(2, avoid=(41001, 41002)) == [41003, 41005]
    # the avoided port stayed bound while choosing (so the kernel moves on), then all closed
    assert [s.port for s in kernel.open] == [41001, 41003, 41001, 41005]
    assert all(s.closed for s in kernel.open)


def test_a_listening_socket_skips_promised_ports_and_stays_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = ScriptedKernel([42001, 42003])
    monkeypatch.setattr(processes.socket, "socket", kernel)
    sock = listening_socket(avoid=(42001,))
    assert sock.getsockname()[1] == 42003 and not sock.closed  # type: ignore[attr-defined]
    assert kernel.open[0].closed  # the refused one is let go


def test_a_listening_socket_holds_its_port_against_other_servers() -> None:
    sock = listening_socket()
    try:
        port = sock.getsockname()[1]
        assert port not in free_ports(64)
        other = socket.socket()
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        other.close()
    finally:
        sock.close()


def test_leftovers_are_stopped_and_strangers_left_alone() -> None:
    # a stand-in child whose command line names serving.cli, as replicas' do
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serving.cli"])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert ours(child.pid) and not ours(stranger.pid) and not ours(os.getpid())
        assert stop_leftovers([child.pid, stranger.pid, 0], grace=5) == [child.pid]
        assert child.wait(5) is not None
        assert stranger.poll() is None  # not ours: untouched
    finally:
        stranger.kill()
        child.kill()
