"""``turnout status --watch``, and progress while ``turnout up`` and ``turnout apply --wait`` wait.

One real plane (``turnout up`` on free loopback ports, run on a pseudo-terminal so it draws its
readiness bars) serves ``iris`` with a fixed 30% canary. The watch runs as a real CLI process on
another pseudo-terminal and on a pipe, and what it draws is compared with the plane's status
JSON; Ctrl-C (SIGINT) ends it with exit status 0. ``apply --wait`` then follows a progressive
rollout to its promotion under real traffic.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.control.planes import ROW, isvc

pytestmark = pytest.mark.slow
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """A process on a pseudo-terminal 160 columns wide; what it draws, read by a thread."""

    def __init__(self, args: list[str], *, cwd: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                                     env={**os.environ, "TERM": "xterm-256color",
                                          "COLUMNS": "160"}, start_new_session=True)
        os.close(slave)
        self.master = master
        self.raw = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self.raw += chunk

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def wait_for(self, check: Callable[[str], bool], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.text):
                return self.text
            assert self.proc.poll() is None, self.text[-3000:]
            time.sleep(0.1)
        raise TimeoutError(self.text[-3000:])

    def interrupt(self) -> int:
        """Ctrl-C, as the terminal sends it: SIGINT to the process."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        self._reader.join(5)
        os.close(self.master)
        return code


class Plane:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.term = Terminal([sys.executable, "-m", "serving.cli", "up", "-f", "manifest.yaml",
                              "--http-port", str(self.http_port),
                              "--grpc-port", str(self.grpc_port)], cwd=folder)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=self.folder,
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        done = self.cli("status", "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def service(self) -> dict:
        (svc,) = self.status()["services"]
        return svc


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path_factory.mktemp("watch")
    x, y = load_iris(return_X_y=True)
    for version, model in (("1", DecisionTreeClassifier(max_depth=3, random_state=0)),
                           ("2", LogisticRegression(max_iter=500)),
                           ("3", LogisticRegression(max_iter=500, C=0.5))):
        (folder / "models" / version).mkdir(parents=True)
        joblib.dump(model.fit(x, y), folder / "models" / version / "model.joblib")
    (folder / "manifest.yaml").write_text(yaml.safe_dump_all([
        isvc("iris", "file://models/1"), isvc("iris", "file://models/2", percent=30)]))
    plane = Plane(folder)
    try:
        plane.term.wait_for(lambda text: "turnout: serving iris" in text, timeout=90)
        deadline = time.monotonic() + 60
        while [v["replicas"]["ready"] for v in plane.service()["variants"]] != [1, 1]:
            assert time.monotonic() < deadline, plane.status()
            time.sleep(0.2)
        yield plane
    finally:
        if plane.term.proc.poll() is None:
            assert plane.term.interrupt() == 0, plane.term.text[-3000:]


def test_up_draws_replicas_becoming_ready_on_a_terminal(plane: Plane) -> None:
    stable = plane.service()["stable"]
    text = plane.term.text
    assert f"{stable} 1/1 ready" in text, text[-3000:]
    assert "\x1b[" in plane.term.raw.decode(errors="replace")  # drawn by rich, not logged
    assert text.index(f"{stable} 1/1 ready") < text.index("turnout: serving iris")


def _rows(text: str, svc: dict) -> dict[str, list[str]]:
    """The cells of the last drawn row of each revision (a rich table's or the plain text's)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()] if "│" in line \
            else line.split()
        for v in svc["variants"]:
            if cells[:2] == [v["role"], v["revision"]]:
                rows[v["revision"]] = cells
    return rows


def test_watch_on_a_terminal_shows_the_plane_and_ends_on_ctrl_c(plane: Plane) -> None:
    svc = plane.service()
    assert [v["weight"] for v in svc["variants"]] == [70, 30]
    term = Terminal([sys.executable, "-m", "serving.cli", "status", "--watch", "--interval",
                     "0.3"], cwd=plane.folder)
    # two frames at least: the view is redrawn in place
    text = term.wait_for(lambda t: t.count("Ctrl-C to stop") >= 2 and len(_rows(t, svc)) == 2)
    assert f"canary {svc['canary']} at 30%" in text
    assert f"iris  [{svc['phase']}]  stable {svc['stable']}" in text
    for v in svc["variants"]:
        cells = _rows(text, svc)[v["revision"]]
        assert cells[2] == f"{v['weight']}%", cells
        assert cells[3].count("█") == v["weight"] // 5  # the weight's bar, 20 wide
        assert cells[4] == "1/1" and cells[-1] == v["storageUri"], cells
    assert f"router http :{plane.http_port}  grpc :{plane.grpc_port}" in text
    assert term.interrupt() == 0
    assert "Traceback" not in term.text and "KeyboardInterrupt" not in term.text


def test_watch_without_a_terminal_repeats_plain_text_and_counts_requests(
        plane: Plane, tmp_path: Path) -> None:
    for _ in range(20):
        assert httpx.post(f"{plane.url}/v2/models/iris/infer", json=ROW, timeout=30).status_code \
            == 200
    with (tmp_path / "out").open("w") as out_file, (tmp_path / "err").open("w") as err_file:
        watch = subprocess.Popen([sys.executable, "-m", "serving.cli", "status", "--watch",
                                  "--interval", "0.3"], cwd=plane.folder, stdout=out_file,
                                 stderr=err_file)
        deadline = time.monotonic() + 60
        while (tmp_path / "out").read_text().count("\n--- ") < 3:  # three frames, a fourth begun
            assert watch.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "err").read_text()
            time.sleep(0.1)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(30) == 0, (tmp_path / "err").read_text()
    out, err = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert err == ""
    assert "\x1b[" not in out  # plain text for a pipe
    frames = [f for f in re.split(r"^--- \d\d:\d\d:\d\d\n", out, flags=re.M) if f]
    assert len(frames) >= 3, out
    svc = plane.service()
    rows = _rows(frames[-2], svc)  # complete: another frame followed it
    assert {r: cells[:4] for r, cells in rows.items()} == {
        v["revision"]: [v["role"], v["revision"], f"{v['weight']}%", "1/1"]
        for v in svc["variants"]}
    # the requests just sent show as a rate on some frame (the router's counters moved)
    rps = [float(cells[4]) for frame in frames for cells in _rows(frame, svc).values()]
    assert max(rps) > 0, out


def test_watch_refuses_a_bad_interval_and_a_missing_plane(plane: Plane, tmp_path: Path) -> None:
    bad = plane.cli("status", "--watch", "--interval", "0")
    assert bad.returncode == 2 and "must be more than 0" in bad.stderr
    assert "Traceback" not in bad.stderr
    gone = subprocess.run([sys.executable, "-m", "serving.cli", "status", "--watch"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "no running plane found" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_apply_wait_follows_a_rollout_to_its_promotion(plane: Plane) -> None:
    before = plane.service()
    rollout = {"rollout": {"steps": [50, 100], "interval": "1s",
                           "analysis": {"minRequests": 3, "maxP99Ratio": None}}}
    (plane.folder / "rollout.yaml").write_text(yaml.safe_dump(
        isvc("iris", "file://models/3", turnout=rollout)))
    stop = threading.Event()

    def traffic() -> None:  # the analysis needs canary requests to advance
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                client.post(f"{plane.url}/v2/models/iris/infer", json=ROW)
                time.sleep(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        done = plane.cli("apply", "-f", "rollout.yaml", "--wait", "--timeout", "90", timeout=120)
    finally:
        stop.set()
        sender.join(30)
    assert done.returncode == 0, (done.stdout, done.stderr)
    after = plane.service()
    new = after["stable"]
    assert new != before["stable"] and after["phase"] == "stable" and after["canary"] is None
    assert new in done.stdout  # the apply's own event line
    lines = done.stderr.splitlines()
    messages = [e["message"] for e in after["events"]]
    started = next(m for m in messages if m.startswith(f"progressive rollout: {new}"))
    promoted = next(m for m in messages if m.startswith(f"promoted {new}"))
    assert started in done.stdout.splitlines()  # printed once, by the apply itself
    # the canary's replica becoming ready at its first step, the promotion, the end state
    both = f"iris: {before['stable']} 1/1 ready, {new} 1/1 ready; canary at 50%"
    assert lines.index(both) < lines.index(f"iris: {promoted}"), lines
    assert lines[-2:] == [f"iris: {promoted}", f"iris: {new} 1/1 ready"], lines
    assert lines.count(f"iris: {promoted}") == 1 and f"iris: {started}" not in lines


def test_servers_and_the_plane_never_load_rich() -> None:
    """Only the CLI's views draw: importing what serves requests loads no terminal library."""
    code = ("import sys, serving.server.process, serving.control.local.plane, "
            "serving.control.local.run, serving.control.local.cli, serving.storage, serving.cli, "
            "router.server, router.cli; print(sorted(m for m in sys.modules if m == 'rich' "
            "or m.startswith('rich.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
