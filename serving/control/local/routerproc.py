"""The router child process: started on the public ports, fed routes through its admin API.

Routes are written to ``.turnout/routes.yaml`` as well as PUT to the admin API, so a router
restarted after a crash comes back with the latest routes, and ``turnout router --config`` on
that file reproduces what the plane was doing. The router is restarted with backoff if it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from serving.control.local.processes import die_with_parent, free_ports
from serving.transport.auth import issue_token_file

log = logging.getLogger("turnout.control")


@dataclass(eq=False)
class RouterProcess:
    state_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    drain_seconds: float = 5.0
    admin_port: int = 0
    # the public ports' TLS flags (--tls-cert ... --tls-client-ca); the admin API stays plain
    # on loopback, where the plane reaches it
    tls_flags: tuple[str, ...] = ()
    # the public ports' authentication flags (--api-keys-file, --jwks, ..., --insecure)
    auth_flags: tuple[str, ...] = ()
    process: asyncio.subprocess.Process | None = None
    # The router's admin API needs a token even on loopback: made once, at the first start,
    # in <state-dir>/router-admin-token (0600), and sent with every admin call.
    _token: str = ""
    restarts: int = 0
    _session: aiohttp.ClientSession | None = None
    _retry_at: float = 0.0

    @property
    def routes_path(self) -> Path:
        return self.state_dir / "routes.yaml"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "router-admin-token"

    async def start(self, timeout: float = 30.0) -> None:
        if not self.routes_path.exists():
            self.routes_path.write_text("services: []\n")
        # not one of the public ports: the router binds those only now, so the kernel may
        # still hand one of them out
        self.admin_port = self.admin_port or free_ports(
            1, avoid=(self.http_port, self.grpc_port))[0]
        if not self._token:
            self._token = issue_token_file(self.token_path)
        out = (self.state_dir / "logs" / "router.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.cli", "router", "--config", str(self.routes_path),
            "--host", self.host, "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port), "--admin-port", str(self.admin_port),
            "--drain-seconds", str(self.drain_seconds), *self.tls_flags,
            "--admin-token-file", str(self.token_path), *self.auth_flags,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent)
        out.close()
        deadline = time.monotonic() + timeout
        while await self.get("/config") is None:
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start (exit {self.process.returncode}); see "
                                   f"{self.state_dir / 'logs' / 'router.log'}")
            await asyncio.sleep(0.1)

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5),
                headers={"authorization": f"Bearer {self._token}"})
        return self._session

    async def get(self, path: str) -> str | None:
        """GET ``path`` on the router's admin API: its text, or None."""
        try:
            session = await self._http()
            async with session.get(f"http://127.0.0.1:{self.admin_port}{path}") as response:
                return await response.text() if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def put_config(self, text: str) -> bool:
        tmp = self.routes_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.routes_path)
        try:
            session = await self._http()
            async with session.put(f"http://127.0.0.1:{self.admin_port}/config",
                                   data=text.encode()) as response:
                if response.status != 200:
                    log.error("router refused the routes: %s", await response.text())
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("router admin unreachable: %s", exc)
            return False

    async def watch(self) -> bool:
        """Restart the router with backoff if it exited; True when it was just restarted."""
        if self.process is None or self.process.returncode is None:
            return False
        now = time.monotonic()
        if not self._retry_at:
            self._retry_at = now + min(30.0, 0.5 * 2 ** self.restarts)
            log.error("router exited with %s; restarting", self.process.returncode)
        if now >= self._retry_at:
            self.restarts += 1
            self._retry_at = 0.0
            with contextlib.suppress(RuntimeError):
                await self.start()
                return True
        return False

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), self.drain_seconds + 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._session is not None:
            await self._session.close()
            self._session = None
