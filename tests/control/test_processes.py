"""Ports that cannot collide, and leftovers of a dead plane found and stopped."""

from __future__ import annotations

import os
import subprocess
import sys

from serving.control.local.processes import free_ports, ours, stop_leftovers


def test_ports_chosen_together_are_distinct() -> None:
    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8


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
