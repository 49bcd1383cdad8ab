"""CPU the model server's event loop spends per one-row request to a batched model (gRPC, or
REST with ``--protocol rest``).

Why: at c=64 on one core the torch MLP's throughput is the model's time plus the loop's, and
the loop's share (decode, batching, encode, HTTP/2) is what Turnout controls. Timed through
sockets it moves by 10% from run to run here (the model streams 20 MB of weights per batch
through the same caches, neighbours share the memory bus); measured in one process it moves by
about 2%, so a change of a few µs shows.

What runs: the real loop gRPC engine, data plane, adaptive batcher and ONNX runtime (the
harness's ``mlp``, batched by hand: 64 rows, no added wait), fed by in-process HTTP/2 clients —
``--clients`` connections, each sending its next request when the answer's trailers are
written, the bytes handed to ``Connection.data_received`` as a socket would. No sockets, no
syscalls for I/O: what is measured is the Python path and the thread hop to the model. With
``--protocol rest`` the clients are HTTP/1.1 keep-alive connections sending the V2 binary
request to the model server's REST protocol (uvicorn's httptools protocol with Turnout's fast
path, serving/transport/fastpath.py), each sending its next request when its answer is written.

Usage: python -m loadtests.loop_cost [--protocol grpc|rest] [--clients 64] [--requests 20000]
[--reps 5]
Prints the loop thread's CPU µs per request (median of the repetitions) and the mean batch.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import hpack
import yaml

from loadtests import load, models
from serving.protocol import proto
from serving.server.dataplane import DataPlane
from serving.server.grpc.loop_engine import build_loop_grpc_server
from serving.server.metrics import Metrics
from serving.server.process import _freeze_startup_objects
from serving.server.repository import ModelRepository
from serving.server.settings import ServerSettings
from serving.transport.h2grpc import frames as f
from serving.transport.h2grpc.connection import Connection

ROOT = Path(__file__).resolve().parent
MODEL = "mlp"


class _Client(asyncio.Transport):
    """One HTTP/2 client connection, in process: it is the server connection's transport."""

    def __init__(self, driver: _Driver, conn: Connection, head: bytes, data: bytes) -> None:
        super().__init__()
        self.driver, self.conn, self.head, self.data = driver, conn, head, data
        self.stream_id = 1
        self.answered = self.messages = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        offset = 0
        while offset + 9 <= len(view):
            length_kind, flags, _ = f.HEAD.unpack_from(view, offset)
            offset += 9 + (length_kind >> 8)
            kind = length_kind & 0xFF
            if kind == f.DATA and length_kind >> 8:
                self.messages += 1  # an answer; an error is trailers alone
            elif kind == f.HEADERS and flags & f.END_STREAM:
                self.answered += 1
                self.driver.answered()
                if self.driver.more():
                    self.driver.loop.call_soon(self.send)

    def send(self) -> None:
        sid = self.stream_id
        self.stream_id += 2
        self.conn.data_received(
            f.HEAD.pack((len(self.head) << 8) | f.HEADERS, f.END_HEADERS, sid) + self.head
            + f.HEAD.pack((len(self.data) << 8) | f.DATA, f.END_STREAM, sid) + self.data)


class _Driver:
    def __init__(self, loop: asyncio.AbstractEventLoop, total: int) -> None:
        self.loop, self.total, self.sent, self.done = loop, total, 0, 0
        self.finished = loop.create_future()

    def more(self) -> bool:
        if self.sent >= self.total:
            return False
        self.sent += 1
        return True

    def answered(self) -> None:
        self.done += 1
        if self.done >= self.total and not self.finished.done():
            self.finished.set_result(None)


class _RestClient:
    """One HTTP/1.1 keep-alive client connection, in process: the server protocol's transport
    (uvicorn's protocol wraps it in Turnout's coalescing transport)."""

    def __init__(self, driver: _Driver, request: bytes) -> None:
        self.driver, self.request = driver, request
        self.protocol: asyncio.Protocol | None = None
        self.answered = self.ok = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5000)}.get(
            name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        for _ in range(data.count(b"HTTP/1.1 ")):  # one answer per request, never split here
            self.answered += 1
            self.driver.answered()
            if self.driver.more():
                self.driver.loop.call_soon(self.send)
        self.ok += data.count(b"HTTP/1.1 200 ")

    def send(self) -> None:
        assert self.protocol is not None
        self.protocol.data_received(self.request)


def _rest_request(payload) -> bytes:
    body = payload.body_file.read_bytes()
    head = "".join(f"{header}\r\n" for header in payload.headers)
    return (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _measure_rest(protocol_class, clients: int, requests: int,
                        request: bytes) -> tuple[float, int]:
    from uvicorn.server import ServerState

    loop = asyncio.get_running_loop()
    state = ServerState()
    warm = _Driver(loop, clients * 20)
    conns = []
    for _ in range(clients):
        client = _RestClient(warm, request)
        client.protocol = protocol_class(state)
        client.protocol.connection_made(client)  # type: ignore[arg-type]
        conns.append(client)
    for client in conns:
        warm.more()
        client.send()
    await warm.finished
    cost, done = await _timed(loop, conns, requests)
    failed = sum(c.answered - c.ok for c in conns)
    if failed:
        raise RuntimeError(f"{failed} requests answered with an error")
    for client in conns:
        client.protocol.connection_lost(None)  # type: ignore[union-attr]
    return cost, done


async def _timed(loop: asyncio.AbstractEventLoop, conns: list, requests: int
                 ) -> tuple[float, int]:
    """The loop thread's CPU µs per request while warmed-up ``conns`` send ``requests``,
    each client its next request once its answer is written; and the answers counted."""
    driver = _Driver(loop, requests)
    for client in conns:
        client.driver = driver
    started = time.thread_time()
    for client in conns:
        driver.more()
        client.send()
    await driver.finished
    return (time.thread_time() - started) / requests * 1e6, driver.done


def _header_blocks(port: int) -> tuple[bytes, bytes]:
    """A connection's first header block (it indexes its fields in the HPACK table) and the
    steady-state one every later request sends."""
    encoder = hpack.Encoder()
    fields = [(":method", "POST"), (":scheme", "http"),
              (":path", f"/{proto.SERVICE_NAME}/ModelInfer"), (":authority", f"127.0.0.1:{port}"),
              ("te", "trailers"), ("content-type", "application/grpc")]
    first = encoder.encode(fields)
    return first, encoder.encode(fields)


async def _measure(server, clients: int, requests: int, grpc_body: bytes) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    first, steady = _header_blocks(8081)
    warm = _Driver(loop, clients * 20)
    conns: list[_Client] = []
    for _ in range(clients):
        conn = Connection(server)
        client = _Client(warm, conn, first, grpc_body)
        conn.connection_made(client)
        conn.data_received(f.PREFACE + f.settings(()) + f.window_update(0, 2**30))
        conns.append(client)
    for client in conns:  # one request each indexes the headers; then the steady block
        warm.more()
        client.send()
        client.head = steady
    await warm.finished
    cost, done = await _timed(loop, conns, requests)
    failed = sum(c.answered - c.messages for c in conns)
    if failed:
        raise RuntimeError(f"{failed} calls ended without an answer (an error status)")
    return cost, done


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loop_cost")
    parser.add_argument("--protocol", choices=("grpc", "rest"), default="grpc")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / ".work")
    args = parser.parse_args(argv)
    artifact = models.build(args.work / "models", [MODEL])[MODEL]
    payloads = load.build_payloads(args.work / "payloads", MODEL, 1)
    grpc_body = payloads["grpc"].body_file.read_bytes()
    args.rest_request = _rest_request(payloads["rest-binary"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL
        folder.mkdir()
        shutil.copy(artifact, folder / artifact.name)
        (folder / "model-settings.yaml").write_text(yaml.safe_dump(
            {"batching": {"max_batch_size": 64, "max_latency_ms": 0}}))
        results = _on_uvloop(_run(Path(tmp), args, grpc_body))
    per_request = [r[0] for r in results]
    summary = {"loop_us_per_request": statistics.median(per_request), "mean_batch": results[-1][1]}
    print(f"{args.protocol} loop CPU per request: median {statistics.median(per_request):.1f} µs "
          f"(runs: {', '.join(f'{x:.1f}' for x in per_request)}); mean batch "
          f"{results[-1][1]:.1f} rows")
    return summary


def cli() -> int:
    main()
    return 0


async def _run(repo: Path, args, grpc_body: bytes) -> list[tuple[float, float]]:
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry

    settings = ServerSettings(model_path=repo)
    metrics = Metrics(CollectorRegistry())
    repository = ModelRepository(path=repo, name=None, metrics=metrics)
    await repository.load_all()
    dataplane = DataPlane(repository=repository, metrics=metrics,
                          executor=ThreadPoolExecutor(1), server_name="turnout")
    if args.protocol == "rest":
        measure = functools.partial(_measure_rest, _rest_protocol(dataplane, metrics, settings),
                                    args.clients, args.requests, args.rest_request)
    else:
        server, _ = build_loop_grpc_server(dataplane, settings)
        server.loop = asyncio.get_running_loop()
        measure = functools.partial(_measure, server, args.clients, args.requests, grpc_body)
    _freeze_startup_objects()  # and the collector's threshold, as `turnout serve` sets them
    out = []
    for _ in range(args.reps):
        before = _batches(metrics)
        cost, _ = await measure()
        rows, count = (a - b for a, b in zip(_batches(metrics), before, strict=True))
        out.append((cost, rows / max(count, 1)))
    return out


def _rest_protocol(dataplane: DataPlane, metrics: Metrics, settings: ServerSettings):
    """A factory of the model server's REST protocol (the fast path over uvicorn's), as
    `turnout serve` configures it, taking the connection's server state."""
    import uvicorn

    from serving.server.rest import build_rest_app
    from serving.transport.fastpath import bind_protocol

    app = build_rest_app(dataplane, registry=metrics.registry,
                         max_payload_bytes=settings.max_payload_bytes)
    config = uvicorn.Config(app, http=bind_protocol(app, settings.http_limits()),
                            lifespan="off", log_config=None, access_log=False)
    config.load()
    return lambda state: config.http_protocol_class(config=config, server_state=state,
                                                    app_state={})


def _on_uvloop(main):
    """The server's own loop (uvloop where installed), as ``turnout serve`` runs it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _batches(metrics: Metrics) -> tuple[float, float]:
    rows = count = 0.0
    metrics.flush()  # the batcher counts in plain numbers until an exposition
    for family in metrics.batch_size.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                rows += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return rows, count


if __name__ == "__main__":
    raise SystemExit(cli())
