"""Model server processes: start, readiness, restart with backoff on crash, drain and stop.

Concurrency design: everything runs on the control plane's one asyncio loop. Each replica is a
``turnout serve`` child process with its own loopback ports and log file; :meth:`Supervisor.tick`
is called periodically and moves every replica through starting → ready → (crashed → backoff →
starting) without blocking: readiness is one short HTTP probe per starting replica per tick,
and exits are noticed through ``returncode``. A replica leaves the routes before it is sent
SIGTERM, so the router stops choosing it while it drains its in-flight requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

from serving.control.local.processes import die_with_parent, free_ports

log = logging.getLogger("turnout.control")

ReplicaState = Literal["starting", "ready", "backoff", "stopping"]


@dataclass(frozen=True)
class ReplicaSpec:
    """What a revision's replicas run: ``turnout serve URI --name MODEL --runtime RUNTIME``.

    ``uri`` is the revision's resolved storage URI: an absolute path, or a remote URI each
    replica fetches into the shared model cache (one download per revision: see
    :func:`serving.storage.fetch`).
    """

    revision: str
    model: str
    uri: str
    runtime: str | None = None
    max_batch_size: int | None = None
    max_batch_latency_ms: int | None = None
    model_version: str | None = None
    extra: tuple[str, ...] = ()  # more flags: a transformer's class and predictor

    def serve_flags(self) -> list[str]:
        """Flags beyond ports: the runtime the manifest asks for, the registry version the
        model reports, and KServe's batcher as the server's default batching."""
        flags = ["--runtime", self.runtime] if self.runtime else []
        flags += self.extra
        if self.model_version is not None:
            flags += ["--model-version", self.model_version]
        if self.max_batch_size is None:
            return flags
        flags += ["--max-batch-size", str(self.max_batch_size)]
        if self.max_batch_latency_ms is not None:
            flags += ["--max-batch-latency-ms", str(self.max_batch_latency_ms)]
        return flags


@dataclass(eq=False)
class Replica:
    spec: ReplicaSpec
    index: int
    log_path: Path
    http_port: int = 0
    grpc_port: int = 0
    state: ReplicaState = "starting"
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    retry_at: float = 0.0
    last_exit: int | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Supervisor:
    """All replicas of all revisions, by revision name."""

    log_dir: Path
    drain_seconds: float = 5.0
    trusted_sources: tuple[str, ...] = ()  # passed on as --trusted-source
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    replicas: dict[str, list[Replica]] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _counter: int = 0

    def ready(self, revision: str) -> list[Replica]:
        return [r for r in self.replicas.get(revision, []) if r.state == "ready"]

    def count(self, revision: str) -> int:
        return len([r for r in self.replicas.get(revision, []) if r.state != "stopping"])

    async def scale(self, spec: ReplicaSpec, replicas: int) -> list[Replica]:
        """Start or pick replicas to reach ``replicas``; returns those to stop (not yet stopped).

        The caller removes the returned replicas from the routes, then calls :meth:`stop`.
        """
        live = [r for r in self.replicas.setdefault(spec.revision, []) if r.state != "stopping"]
        while len(live) < replicas:
            self._counter += 1
            replica = Replica(spec, self._counter, self.log_dir / f"{spec.revision}-{self._counter}.log")
            self.replicas[spec.revision].append(replica)
            live.append(replica)
            await self._start(replica)
        # Newest first: a replica still starting is cheaper to give up than one serving.
        extra = sorted(live, key=lambda r: (r.state == "ready", -r.index))[:len(live) - replicas]
        for replica in extra:
            replica.state = "stopping"
        return extra

    async def _start(self, replica: Replica) -> None:
        # not another replica's: one started a moment ago may not have bound its ports yet
        taken = {port for rs in self.replicas.values() for r in rs if r is not replica
                 for port in (r.http_port, r.grpc_port)}
        replica.http_port, replica.grpc_port = free_ports(2, avoid=taken)
        with replica.log_path.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')} http {replica.http_port} grpc "
                      f"{replica.grpc_port}\n".encode())
            replica.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serving.cli", "serve", replica.spec.uri,
                "--name", replica.spec.model, "--http-port", str(replica.http_port),
                "--grpc-port", str(replica.grpc_port), "--drain-seconds", str(self.drain_seconds),
                *replica.spec.serve_flags(),
                *[flag for source in self.trusted_sources
                  for flag in ("--trusted-source", source)],
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the plane, which drains in order
                preexec_fn=die_with_parent)  # and a killed plane takes its replicas along
        replica.state, replica.started_at = "starting", time.monotonic()

    async def tick(self) -> bool:
        """Probe starting replicas, notice exits, restart after backoff; True if any changed."""
        changed = False
        now = time.monotonic()
        for replica in [r for rs in self.replicas.values() for r in rs]:
            proc = replica.process
            if replica.state in ("starting", "ready") and proc and proc.returncode is not None:
                replica.last_exit = proc.returncode
                delay = min(self.backoff_max, self.backoff_base * 2 ** replica.restarts)
                replica.state, replica.retry_at = "backoff", now + delay
                replica.restarts += 1
                log.warning("%s replica %d exited with %s; restarting in %.1fs (see %s)",
                            replica.spec.revision, replica.index, proc.returncode, delay,
                            replica.log_path)
                changed = True
            elif replica.state == "backoff" and now >= replica.retry_at:
                await self._start(replica)
            elif replica.state == "starting" and await self._probe(replica):
                replica.state = "ready"
                log.info("%s replica %d ready on %s", replica.spec.revision, replica.index,
                         replica.http)
                changed = True
        return changed

    async def _probe(self, replica: Replica) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        url = f"{replica.http}/v2/models/{replica.spec.model}/ready"
        try:
            async with self._session.get(url) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def stop(self, replicas: list[Replica]) -> None:
        """SIGTERM (the server drains in-flight requests), then SIGKILL after the grace."""
        for replica in replicas:
            replica.state = "stopping"
            if replica.process and replica.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    replica.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._reap(r) for r in replicas))
        for replica in replicas:
            with contextlib.suppress(ValueError):
                self.replicas[replica.spec.revision].remove(replica)

    async def _reap(self, replica: Replica) -> None:
        if replica.process is None:
            return
        try:
            await asyncio.wait_for(replica.process.wait(), self.drain_seconds + 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replica.process.pid, signal.SIGKILL)
            await replica.process.wait()

    async def stop_all(self) -> None:
        await self.stop([r for rs in self.replicas.values() for r in rs])
        if self._session is not None:
            await self._session.close()
