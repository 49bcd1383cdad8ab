"""Composition root of a model-server process, and its lifecycle.

Startup: listen on REST and gRPC at once (liveness answers while models load), load the
repository (unless a supervisor already did, before forking), then report ready. Shutdown on
SIGTERM/SIGINT: report not ready (REST, gRPC and the gRPC health service), stop accepting, let
in-flight requests finish within ``drain_seconds``, stop the predict pool, exit 0. A second
signal forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from serving import native
from serving.server.dataplane import DataPlane
from serving.server.metrics import Metrics
from serving.server.repository import ModelRepository
from serving.server.rest import build_rest_app
from serving.server.settings import ServerSettings
from serving.transport.auth import Guard, GuardedApp, build_authenticator
from serving.transport.fastpath import bind_protocol, h11_limit
from serving.transport.tls import CertificateReloader, server_tls

log = logging.getLogger("turnout.server")
# How stale a worker's request counts may be in the shared multiprocess files.
METRICS_FLUSH_SECONDS = 0.5
# Net new tracked objects between young collections (CPython's default: 700); see
# _freeze_startup_objects.
YOUNG_GC_THRESHOLD = 10_000


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the composition root owns the shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def process_registry() -> CollectorRegistry:
    """Registry for a single-process server: our metrics plus process/GC/platform collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that sibling worker processes can bind too; the kernel spreads
    connections between them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


async def serve(settings: ServerSettings, *, repository: ModelRepository, metrics: Metrics,
                exposition: CollectorRegistry, preloaded: bool = False,
                reuse_port: bool = False) -> None:
    """Run one server process until a signal arrives, then drain and return."""
    executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="predict")
    dataplane = DataPlane(repository=repository, metrics=metrics, executor=executor,
                          server_name=settings.server_name, repository_mutable=not reuse_port,
                          strict_readiness=settings.strict_readiness)
    app = build_rest_app(dataplane, registry=exposition,
                         max_payload_bytes=settings.max_payload_bytes)
    # Authentication: None when no key or JWKS is configured, and then nothing checks anything.
    authenticator = build_authenticator(settings)
    guard = Guard(authenticator) if authenticator is not None else None
    tls = server_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    certificates = CertificateReloader(tls) if tls is not None else None
    http = _UvicornServer(uvicorn.Config(
        GuardedApp(app, guard) if guard is not None else app, host=settings.host,
        port=settings.http_port, loop="none",
        http=bind_protocol(app, settings.http_limits(), guard=guard), ws="none",
        h11_max_incomplete_event_size=h11_limit(settings.http_limits()),
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
        lifespan="off", log_config=None, access_log=False, proxy_headers=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_seconds)),
        ssl_context_factory=certificates.uvicorn_factory() if certificates else None))
    sockets = [reuse_port_socket(settings.host, settings.http_port)] if reuse_port else None

    grpc_server: Any = None
    set_serving = None
    if settings.grpc_port and settings.grpc_engine == "aio":
        from serving.server.grpc.server import build_grpc_server
        from serving.transport.grpc_auth import AioAuthInterceptor

        grpc_server, set_serving = build_grpc_server(
            dataplane, settings, credentials=certificates.grpc_credentials() if certificates
            else None, interceptors=[AioAuthInterceptor(authenticator)] if authenticator else ())
        await grpc_server.start()
    elif settings.grpc_port and settings.grpc_engine == "loop":
        from serving.server.grpc.loop_engine import build_loop_grpc_server
        from serving.transport.grpc_auth import AioAuthInterceptor

        grpc_server, set_serving = build_loop_grpc_server(
            dataplane, settings,
            interceptors=[AioAuthInterceptor(authenticator)] if authenticator else ())
        await grpc_server.start(settings.host, settings.grpc_port,
                                ssl_context=certificates.server_context() if certificates
                                else None)
    elif settings.grpc_port:
        from serving.server.grpc.threaded import build_threaded_grpc_server
        from serving.transport.grpc_auth import AuthInterceptor

        grpc_server, set_serving = build_threaded_grpc_server(
            dataplane, settings, asyncio.get_running_loop(),
            credentials=certificates.grpc_credentials() if certificates else None,
            interceptors=[AuthInterceptor(authenticator)] if authenticator else ())
        grpc_server.start()
    if set_serving is not None:  # NOT_SERVING until the models are loaded, as REST's 503
        set_serving(dataplane.ready())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without waiting for in-flight requests", sig.name)
            _exit_now(1)
        log.info("%s received: draining", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    http_task = asyncio.create_task(http.serve(sockets=sockets))
    log.info("serving REST on %s:%d, gRPC on %s%s", settings.host, settings.http_port,
             f"{settings.host}:{settings.grpc_port} ({settings.grpc_engine} engine)"
             if settings.grpc_port else "off",
             " (TLS, client certificates required)" if tls and tls.client_ca
             else " (TLS)" if tls else "")
    log.info("%s", native.state())
    watcher = asyncio.create_task(certificates.watch()) if certificates else None
    if not preloaded:
        await repository.load_all()
    _freeze_startup_objects()
    dataplane.started = True
    if set_serving is not None:
        set_serving(dataplane.ready())
        dataplane.readiness_changed = set_serving
    ready, reason = dataplane.readiness()
    if ready:
        log.info("ready")
    else:
        log.warning("not ready (strict readiness; --no-strict-readiness relaxes it): %s", reason)

    flusher = asyncio.create_task(_flush_metrics_periodically(metrics, METRICS_FLUSH_SECONDS))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopper, http_task}, return_when=asyncio.FIRST_COMPLETED)
    if http_task in done:  # the HTTP server died on its own (e.g. the port is taken)
        stopper.cancel()
        if not http_task.cancelled():
            http_task.exception()  # retrieved: uvicorn already logged why
        raise SystemExit(f"turnout serve: the REST server on {settings.host}:"
                         f"{settings.http_port} stopped (see the log above)")

    dataplane.draining = True
    if set_serving is not None:
        set_serving(False)
    http.should_exit = True
    waits: list[asyncio.Future[object]] = [http_task]
    if grpc_server is not None and settings.grpc_engine in ("aio", "loop"):
        waits.append(asyncio.ensure_future(grpc_server.stop(grace=settings.drain_seconds)))
    elif grpc_server is not None:  # threaded: stop() returns an Event set once drained
        drained = grpc_server.stop(grace=settings.drain_seconds)
        waits.append(asyncio.ensure_future(asyncio.to_thread(drained.wait)))
    drain_started = time.monotonic()
    await asyncio.gather(*waits, return_exceptions=True)
    # Predict calls still running after the drain time would hold the exit for as long as
    # they take (a thread cannot be stopped): after --drain-seconds the process exits anyway.
    executor.shutdown(wait=False, cancel_futures=True)
    busy = _join(executor, settings.drain_seconds - (time.monotonic() - drain_started))
    flusher.cancel()
    if watcher is not None:
        watcher.cancel()
    metrics.flush()
    if busy:
        log.warning("drain time (%gs) over with %d predict call(s) still running: exiting",
                    settings.drain_seconds, busy)
        _exit_now(0)
    log.info("stopped")


def _join(executor: ThreadPoolExecutor, seconds: float) -> int:
    """Wait up to ``seconds`` for the executor's threads; how many are still running."""
    deadline = time.monotonic() + max(seconds, 0.0)
    threads = list(getattr(executor, "_threads", ()))  # the pool's own threads (CPython)
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    return sum(thread.is_alive() for thread in threads)


def _exit_now(code: int) -> None:
    """Leave without joining threads (a running predict cannot be interrupted): logs first."""
    logging.shutdown()
    os._exit(code)


async def _flush_metrics_periodically(metrics: Metrics, interval: float) -> None:
    """Worker processes expose each other's counts through files, not through this process's
    /metrics handler, so each flushes its request counts on a timer too."""
    while True:
        await asyncio.sleep(interval)
        metrics.flush()


def run_loop(main: object) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is Linux/macOS only; asyncio's loop works everywhere
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


def run(settings: ServerSettings) -> None:
    if settings.workers > 1:
        from serving.server.workers import supervise

        supervise(settings)
        return
    registry = process_registry()
    metrics = Metrics(registry)
    repository = ModelRepository(path=settings.model_path, name=settings.model_name,
                                 metrics=metrics, model_class=settings.model_class,
                                 default_batching=settings.default_batching(),
                                 runtime=settings.runtime, version=settings.model_version,
                                 trusted_sources=settings.trusted_sources,
                                 overrides=settings.model_overrides())
    run_loop(serve(settings, repository=repository, metrics=metrics, exposition=registry))


def _freeze_startup_objects() -> None:
    """Move what imports and model loading created out of the cyclic collector's reach.

    The frameworks' modules and models are ~360,000 tracked objects that never die; every
    full collection walked them: 100-165 ms pauses, several a second under gRPC load to a batched
    model (its waiting calls' coroutines and futures survive into the old generation), which
    was the whole p99 tail of torch over gRPC at c=64 (gc.callbacks timings). Frozen, a full
    collection walks only what was made since.

    The young generation's threshold goes from 700 to ``YOUNG_GC_THRESHOLD``: a request in
    flight holds tens of tracked objects (buffers, arrays, futures), so under load 700 was
    crossed every few dozen requests though nothing they make is cyclic garbage (the transports
    break their cycles); each pass walked every in-flight request's objects for nothing.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)

