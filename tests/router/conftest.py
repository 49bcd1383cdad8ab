"""Router fixtures: model folders whose variants answer visibly differently, real upstream
servers shared per session, and a router running in a background thread of the test process.

Variant identity is in the prediction itself: model ``m`` is Echo (y = x) on the "a" servers
and a doubler (y = 2x) on the "b" server, and the shadow doubles too, after a delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from router.server import RouterServer
from router.settings import RouterSettings
from serving.spec.routes import RouterConfig, parse_config


def _shared() -> Any:
    """tests/conftest.py's helpers (``tests`` is not a package, so load it by path)."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("turnout_tests_shared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SHARED = _shared()
ServerProcess = _SHARED.ServerProcess
free_port = _SHARED.free_port


def _settings(path: Path, runtime: str, **params: Any) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": f"turnout_test_runtimes:{runtime}", "parameters": params,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))


def make_folder(root: Path, kind: str, model_zoo: dict[str, Any]) -> Path:
    """A model folder: ``m`` (echo, double or slow double) plus a real sklearn ``iris_*``."""
    folder = root / kind
    if kind == "a":
        _settings(folder / "m", "Echo")
        _settings(folder / "failing", "Failing")
        _settings(folder / "slow", "Slow", delay=1.0)
        shutil.copytree(model_zoo["root"] / "iris" / "1", folder / "iris_tree" / "1")
    elif kind == "b":
        _settings(folder / "m", "Slow", delay=0.0)
        shutil.copytree(model_zoo["root"] / "iris" / "2", folder / "iris_logreg" / "1")
    elif kind == "shadow":
        _settings(folder / "m", "Slow", delay=0.3)
    return folder


def start_servers(folders: list[Path]) -> list[ServerProcess]:
    """Start all at once (each takes seconds to import its frameworks), then wait for each."""
    procs = [ServerProcess(f) for f in folders]
    try:
        for proc in procs:
            proc.wait_ready()
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


@pytest.fixture(scope="session")
def upstreams(model_zoo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[dict[str, ServerProcess]]:
    """Servers only read by tests: a1, a2 (replicas of a), b and shadow."""
    root = tmp_path_factory.mktemp("router-zoo")
    folders = {k: make_folder(root, k, model_zoo) for k in ("a", "b", "shadow")}
    names = ["a1", "a2", "b", "shadow"]
    procs = start_servers([folders["a"], folders["a"], folders["b"], folders["shadow"]])
    try:
        yield dict(zip(names, procs, strict=True))
    finally:
        for proc in procs:
            proc.stop()


# How a port taken by someone else shows in the router's start-up errors (REST, admin, gRPC).
_BIND_FAILED = ("could not listen", "address already in use", "bind")


def _causes(exc: BaseException) -> str:
    """The messages of an exception and of its causes, lower-cased."""
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(parts).lower()


class RouterThread:
    """A :class:`RouterServer` on its own event loop in a daemon thread, on free loopback ports.

    ``settings``: more :class:`RouterSettings` (authentication, for instance). The admin API
    needs its token: ``admin_headers`` carries it.
    """

    def __init__(self, config: RouterConfig | dict[str, Any], tmp: Path, *,
                 max_payload_bytes: int = 1 << 20, grpc: bool = True,
                 grpc_threads: int = 8, settings: dict[str, Any] | None = None) -> None:
        self._extra = settings or {}
        self.config_path = tmp / f"routes-{free_port()}.yaml"
        doc = config if isinstance(config, dict) else config.model_dump(mode="json", by_alias=True,
                                                                        exclude_none=True)
        self.config_path.write_text(yaml.safe_dump(doc))
        # free_port() releases the port before the router binds it, and under load an outgoing
        # connection can take it meanwhile (EADDRINUSE); such a start is retried on new ports.
        for attempt in range(3):
            try:
                self._start(max_payload_bytes, grpc, grpc_threads)
                return
            except RuntimeError as exc:
                if attempt == 2 or not any(sign in _causes(exc) for sign in _BIND_FAILED):
                    raise

    def _start(self, max_payload_bytes: int, grpc: bool, grpc_threads: int) -> None:
        self.http_port, self.admin_port = free_port(), free_port()
        self.grpc_port = free_port() if grpc else 0
        self.registry = CollectorRegistry()
        settings = RouterSettings(config=self.config_path, http_port=self.http_port,
                                  grpc_port=self.grpc_port, admin_port=self.admin_port,
                                  max_payload_bytes=max_payload_bytes, reload_poll_seconds=0,
                                  grpc_threads=grpc_threads,
                                  drain_seconds=2, **self._extra)
        self.server = RouterServer(settings, registry=self.registry)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.start())
            except BaseException as exc:  # reported to the test thread below
                self.error = exc
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(30)
        if self.error is not None:
            self.thread.join(10)
            with contextlib.suppress(BaseException):  # close what did start
                self.loop.run_until_complete(self.server.stop())
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()
            raise RuntimeError(f"router did not start: {self.error}") from self.error
        token = self.server.admin_token_path
        self.admin_headers = {"authorization": f"Bearer {token.read_text().strip()}"} \
            if token is not None else {}

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the router's loop and return its result."""
        async def wrapper() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[Any]:
    routers: list[RouterThread] = []

    def start(config: RouterConfig | dict[str, Any], **kwargs: Any) -> RouterThread:
        parse_config(config if isinstance(config, dict) else None)  # fail early, with its errors
        router = RouterThread(config, tmp_path, **kwargs)
        routers.append(router)
        return router

    yield start
    for router in routers:
        router.stop()


@pytest.fixture(scope="session")
def router_cls() -> type[RouterThread]:
    """The class itself, for module-scoped routers (tests do not import conftest)."""
    return RouterThread


@pytest.fixture(scope="session", name="make_folder")
def make_folder_fixture() -> Any:
    return make_folder


@pytest.fixture(scope="session", name="start_servers")
def start_servers_fixture() -> Any:
    return start_servers


@pytest.fixture(scope="session")
def free_port_fn() -> Any:
    return free_port


