"""Composition root of the router process, and its lifecycle.

Startup: read and validate the routes (a bad file stops the start with its errors), open the
public REST and gRPC ports and the loopback admin port, start health checks and the file
watcher. Shutdown on SIGTERM/SIGINT: report not ready, stop accepting, let in-flight requests
finish within ``drain_seconds``, cancel shadows and background tasks, close upstream pools.
SIGHUP reloads the routes file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from router.access import admin_guard, admin_token, config_check, public_guard
from router.admin import AdminApp
from router.client import HttpClient
from router.core import Router
from router.graph import GraphRunner
from router.grpc_edge import build_grpc_server
from router.grpc_loop_edge import build_loop_grpc_server
from router.h1client import H1Client
from router.metrics import RouterMetrics
from router.reload import FileSource
from router.rest import RestEdge
from router.rest_protocol import rest_protocol
from router.settings import RouterSettings
from serving.spec.routes import RouterConfig
from serving.transport.auth import GuardedApp, build_authenticator
from serving.transport.bounded import BoundedHttpToolsProtocol, HttpLimits, limited
from serving.transport.h2grpc import GrpcServer
from serving.transport.tls import CertificateReloader, server_tls

log = logging.getLogger("turnout.router")


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns the shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_server(app: object, host: str, port: int, drain: float,
                 protocol: type[asyncio.Protocol] | str = BoundedHttpToolsProtocol,
                 certificates: CertificateReloader | None = None,
                 limits: HttpLimits | None = None) -> _UvicornServer:
    limits = limits or HttpLimits()
    if isinstance(protocol, type) and issubclass(protocol, BoundedHttpToolsProtocol):
        protocol = limited(protocol, limits)
    return _UvicornServer(uvicorn.Config(
        app, host=host, port=port, loop="none", http=protocol, ws="none",
        h11_max_incomplete_event_size=limits.max_header_bytes,  # the h11 fallback's cap
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
        lifespan="off", log_config=None, access_log=False, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=int(drain) or None, backlog=4096,
        ssl_context_factory=certificates.uvicorn_factory() if certificates else None))


class RouterServer:
    """The running router: build with settings, ``await start()``, later ``await stop()``."""

    def __init__(self, settings: RouterSettings, *, config: RouterConfig | None = None,
                 registry: CollectorRegistry | None = None,
                 client: HttpClient | None = None) -> None:
        self.settings = settings
        # routes naming per-service principals need authentication on (router/access.py)
        self._check_config = config_check(settings.auth_configured)
        self.source = FileSource(settings.config, check=self._check_config)
        self.admin_token_path: Path | None = None
        self._config = config
        self.registry = registry or _default_registry()
        self._client = client
        self.router: Router | None = None
        self._http: list[_UvicornServer] = []
        self._grpc: grpc.Server | None = None
        self._loop_grpc: GrpcServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        config = self._check_config(self._config or self.source.load())
        # Authentication: None when no key or JWKS is configured, and then nothing is checked
        # on the public ports (the admin API always needs its token).
        authenticator = build_authenticator(s)
        metrics = RouterMetrics(self.registry)
        upstream_tls = s.upstream_tls()
        client = self._client or H1Client(
            connect_timeout=config.upstream.connect_timeout_seconds,
            per_host=config.upstream.max_connections_per_endpoint, tls=upstream_tls)
        router = self.router = Router(config, client=client, metrics=metrics,
                                      max_message_bytes=s.max_payload_bytes,
                                      upstream_tls=upstream_tls)
        tls = server_tls(s.tls_cert, s.tls_key, s.tls_client_ca)
        certificates = CertificateReloader(tls) if tls is not None else None
        rest = RestEdge(router, max_payload_bytes=s.max_payload_bytes, graphs=GraphRunner(router))
        guard = public_guard(authenticator, lambda: router.table) if authenticator else None
        self._http.append(_http_server(GuardedApp(rest, guard) if guard else rest, s.host,
                                       s.http_port, s.drain_seconds,
                                       rest_protocol(rest, guard=guard), certificates,
                                       s.http_limits()))
        if s.admin_port:
            token, self.admin_token_path = admin_token(s.admin_token_file, s.config)
            admin = GuardedApp(AdminApp(router, reload=self.source.load, check=self._check_config),
                               admin_guard(token, authenticator))
            self._http.append(_http_server(admin, s.admin_host, s.admin_port, 1,
                                           certificates=certificates if s.admin_serves_tls
                                           else None, limits=s.http_limits()))
        for server in self._http:
            self._tasks.append(asyncio.create_task(server.serve()))
        if s.grpc_port and s.grpc_engine == "loop":
            self._loop_grpc = await build_loop_grpc_server(
                router, max_payload_bytes=s.max_payload_bytes, max_calls=16 * s.grpc_threads,
                max_header_bytes=s.max_header_bytes, handshake_seconds=s.header_timeout_seconds,
                authenticator=authenticator)
            await self._loop_grpc.start(s.host, s.grpc_port, ssl_context=
                                        certificates.server_context() if certificates else None)
        elif s.grpc_port:
            self._grpc = build_grpc_server(router, host=s.host, port=s.grpc_port,
                                           max_payload_bytes=s.max_payload_bytes,
                                           threads=s.grpc_threads,
                                           credentials=certificates.grpc_credentials()
                                           if certificates else None,
                                           authenticator=authenticator)
            self._grpc.start()
        self._tasks.append(asyncio.create_task(router.run_health_checks()))
        if certificates is not None:
            self._tasks.append(asyncio.create_task(certificates.watch()))
        if s.reload_poll_seconds:
            self._tasks.append(asyncio.create_task(
                self.source.watch(router, s.reload_poll_seconds)))
        while not all(server.started for server in self._http):
            if any(t.done() for t in self._tasks):
                raise SystemExit(f"router could not listen on {s.host}:{s.http_port} "
                                 f"(admin {s.admin_host}:{s.admin_port})")
            await asyncio.sleep(0.01)
        log.info("router serving REST on %s:%d, gRPC on %s, admin on %s%s", s.host, s.http_port,
                 f"{s.host}:{s.grpc_port}" if s.grpc_port else "off",
                 f"{s.admin_host}:{s.admin_port}" if s.admin_port else "off",
                 "" if tls is None else " (TLS; admin plain)" if not s.admin_serves_tls
                 else " (TLS)")

    def reload(self) -> None:
        if self.router is not None:
            self.source.reload_into(self.router)

    async def stop(self) -> None:
        if self.router is not None:
            self.router.ready = False
            self.router.holds.close()  # held requests get their 503 now, to retry elsewhere
        for server in self._http:
            server.should_exit = True
        waits: list[asyncio.Future[object] | asyncio.Task[None]] = list(self._tasks[:len(self._http)])
        if self._grpc is not None:
            stopped = self._grpc.stop(grace=self.settings.drain_seconds)
            waits.append(asyncio.get_running_loop().run_in_executor(None, stopped.wait))
        if self._loop_grpc is not None:
            waits.append(asyncio.ensure_future(self._loop_grpc.stop(self.settings.drain_seconds)))
        await asyncio.gather(*waits, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.router is not None:
            await self.router.close()


def _default_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


async def serve(settings: RouterSettings) -> None:
    """Run the router until SIGTERM/SIGINT; SIGHUP reloads the routes file."""
    server = RouterServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining")
    await server.stop()
    log.info("stopped")


def run(settings: RouterSettings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
