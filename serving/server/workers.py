"""Several server processes on the same ports, supervised by one parent.

The parent loads every model once, then forks the workers, so model memory is shared
copy-on-write instead of multiplied by the worker count. Each worker binds REST and gRPC with
SO_REUSEPORT and the kernel spreads connections between them. Metrics use prometheus-client's
multiprocess mode (files under ``PROMETHEUS_MULTIPROC_DIR``, a fresh temporary folder unless
set), so ``/metrics`` on any worker reports the sum over all of them.

The parent never starts an event loop that outlives loading, nor any gRPC object, so forking
(and re-forking a worker that died) is safe. On SIGTERM it forwards the signal, waits for the
workers to drain, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
import time

from prometheus_client import CollectorRegistry, multiprocess, values

from serving.server.metrics import Metrics
from serving.server.repository import ModelRepository
from serving.server.settings import ServerSettings

log = logging.getLogger("turnout.workers")
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def _enable_multiprocess_metrics() -> None:
    """Switch prometheus-client to per-process files, even though it was imported already:
    metric values are created through ``values.ValueClass``, looked up when first used."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="turnout-metrics-")
    values.ValueClass = values.MultiProcessValue()


def _exposition_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def _worker_main(settings: ServerSettings, repository: ModelRepository, metrics: Metrics) -> None:
    from serving.server.process import run_loop, serve

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 0
    try:
        run_loop(serve(settings, repository=repository, metrics=metrics,
                       exposition=_exposition_registry(), preloaded=True, reuse_port=True))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("worker %d crashed", os.getpid())
        code = 1
    os._exit(code)


def supervise(settings: ServerSettings) -> None:
    _enable_multiprocess_metrics()
    metrics = Metrics(CollectorRegistry())  # values go to the multiprocess files, not this one
    repository = ModelRepository(path=settings.model_path, name=settings.model_name,
                                 metrics=metrics, model_class=settings.model_class,
                                 default_batching=settings.default_batching(),
                                 runtime=settings.runtime, version=settings.model_version,
                                 trusted_sources=settings.trusted_sources,
                                 overrides=settings.model_overrides())
    started = time.perf_counter()
    asyncio.run(repository.load_all())  # before forking: workers share the loaded models
    log.info("loaded models in %.3fs; starting %d workers", time.perf_counter() - started,
             settings.workers)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def spawn() -> int:
        pid = os.fork()
        if pid == 0:
            _worker_main(settings, repository, metrics)
        return pid

    workers: dict[int, int] = {}  # pid -> restarts so far for that slot
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for _ in range(settings.workers):
        workers[spawn()] = 0

    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        restarts = workers.pop(pid, 0)
        multiprocess.mark_process_dead(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            log.info("worker %d stopped (%d)", pid, code)
            continue
        delay = RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]
        log.error("worker %d exited with %d; restarting in %.1fs", pid, code, delay)
        time.sleep(delay)
        if not stopping:
            workers[spawn()] = restarts + 1
    log.info("all workers stopped")
