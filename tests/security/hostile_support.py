"""Shared by the hostile-input suites: a real model server and a real router in front of it
(separate processes on loopback, with time limits low enough for tests), and a raw-socket
client that sends exactly the bytes it is given, paced if asked, and reads until the server
closes or goes quiet."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.processes import terminate


def _shared() -> Any:
    """tests/conftest.py's helpers (``tests`` is not a package, so load it by path)."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("turnout_tests_shared_hostile", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SHARED = _shared()
ServerProcess = _SHARED.ServerProcess
free_port = _SHARED.free_port

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
BODY_MIN_RATE = 1000
KEEP_ALIVE = 2.0
# The same limits on the model server and the router: the defaults for sizes and counts,
# seconds instead of tens of seconds for the clocks.
LIMIT_FLAGS = ("--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
               "--body-min-rate", str(BODY_MIN_RATE), "--keep-alive-timeout", str(KEEP_ALIVE))
GOOD = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}'


def model_folder(root: Path) -> Path:
    """A repository with ``m``: Echo of FP32 [-1, 2], inline (answered on the fast path)."""
    folder = root / "models" / "m"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": "turnout_test_runtimes:Echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    return folder.parent


class RouterProcess:
    """A real ``turnout router`` subprocess in front of ``upstream`` (REST only, no admin)."""

    def __init__(self, tmp: Path, upstream: Any, *extra: str,
                 service: dict[str, Any] | None = None) -> None:
        """``service``: more fields of the one service (``upstream`` limits, say)."""
        self.config = tmp / "routes.yaml"
        self.config.write_text(yaml.safe_dump({"services": [{"name": "m", "variants": [
            {"name": "default", "weight": 1, "http": [upstream.url]}], **(service or {})}]}))
        self._tmp, self._extra = tmp, extra
        self._spawn()

    def _spawn(self) -> None:
        self.http_port = free_port()
        self.log_path = self._tmp / f"router-{self.http_port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "router", "--config", str(self.config),
             "--http-port", str(self.http_port), "--grpc-port", "0", "--admin-port", "0",
             *self._extra], stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "TURNOUT_ROUTER_RELOAD_POLL_SECONDS": "0"})
        self.url = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 60) -> RouterProcess:
        deadline = time.monotonic() + timeout
        respawns = 2
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log()
                if respawns and "could not listen" in text:
                    respawns -= 1
                    self._log.close()
                    self._spawn()
                    continue
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{text}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"router not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@dataclass
class Exchange:
    """What a raw connection got back: the bytes, whether the server closed it, and when."""

    data: bytes
    closed: bool          # the server closed (EOF or reset), rather than going quiet
    seconds: float        # from the first byte sent to the close (or to going quiet)

    def responses(self) -> list[tuple[int, dict[str, str], bytes]]:
        """Each HTTP response in ``data``: status, headers (lower-case names), body."""
        out = []
        rest = self.data
        while rest:
            head, sep, rest = rest.partition(b"\r\n\r\n")
            if not sep:
                raise AssertionError(f"truncated response: {head[:200]!r}")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status == 100:
                continue
            length = int(headers.get("content-length", "0"))
            out.append((status, headers, rest[:length]))
            rest = rest[length:]
        return out

    def only(self) -> tuple[int, dict[str, Any]]:
        """The one response's status and JSON body."""
        (answer,) = self.responses()
        status, headers, body = answer
        assert headers.get("content-type") == "application/json", headers
        return status, orjson.loads(body)


def exchange(port: int, payload: bytes | list[tuple[bytes, float]], *, quiet: float = 5.0,
             limit: float = 30.0) -> Exchange:
    """Send ``payload`` (bytes, or (chunk, pause-after) pairs for a paced client), then read
    until the server closes, or nothing arrives for ``quiet`` seconds, or ``limit`` passes."""
    chunks = [(payload, 0.0)] if isinstance(payload, bytes) else payload
    started = time.monotonic()
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=quiet) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk, pause in chunks:
            try:
                if chunk:
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before taking it all
            if pause:
                time.sleep(pause)
        while time.monotonic() - started < limit:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            received += data
    return Exchange(received, closed, time.monotonic() - started)


def good_request(path: str = "/v2/models/m/infer", *, close: bool = False) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(GOOD)}\r\n" + ("Connection: close\r\n" if close else "")
            + "\r\n").encode() + GOOD
