"""CPU the model server's event loop spends per one-row gRPC request to a batched model.

Why: at c=64 on one core the torch MLP's throughput is the model's time plus the loop's, and
the loop's share (decode, batching, encode, HTTP/2) is what Turnout controls. Timed through
sockets it moves by 10% from run to run here (the model streams 20 MB of weights per batch
through the same caches, neighbours share the memory bus); measured in one process it moves by
about 2%, so a change of a few µs shows.

What runs: the real loop gRPC engine, data plane, adaptive batcher and ONNX runtime (the
harness's ``mlp``, batched by hand: 64 rows, no added wait), fed by in-process HTTP/2 clients —
``--clients`` connections, each sending its next request when the answer's trailers are
written, the bytes handed to ``Connection.data_received`` as a socket would. No sockets, no
syscalls for I/O: what is measured is the Python path and the thread hop to the model.

Usage: python -m loadtests.loop_cost [--clients 64] [--requests 20000] [--reps 5]
Prints the loop thread's CPU µs per request (median of the repetitions) and the mean batch.
"""

from __future__ import annotations

import argparse
import asyncio
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
    driver = _Driver(loop, requests)
    for client in conns:
        client.driver = driver
    started = time.thread_time()
    for client in conns:
        driver.more()
        client.send()
    await driver.finished
    cost = (time.thread_time() - started) / requests * 1e6
    failed = sum(c.answered - c.messages for c in conns)
    if failed:
        raise RuntimeError(f"{failed} calls ended without an answer (an error status)")
    return cost, driver.done


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loop_cost")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / ".work")
    args = parser.parse_args(argv)
    artifact = models.build(args.work / "models", [MODEL])[MODEL]
    payload = load.build_payloads(args.work / "payloads", MODEL, 1)["grpc"]
    grpc_body = payload.body_file.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL
        folder.mkdir()
        shutil.copy(artifact, folder / artifact.name)
        (folder / "model-settings.yaml").write_text(yaml.safe_dump(
            {"batching": {"max_batch_size": 64, "max_latency_ms": 0}}))
        results = _on_uvloop(_run(Path(tmp), args, grpc_body))
    per_request = [r[0] for r in results]
    summary = {"loop_us_per_request": statistics.median(per_request), "mean_batch": results[-1][1]}
    print(f"loop CPU per request: median {statistics.median(per_request):.1f} µs "
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
    server, _ = build_loop_grpc_server(dataplane, settings)
    server.loop = asyncio.get_running_loop()
    _freeze_startup_objects()  # and the collector's threshold, as `turnout serve` sets them
    out = []
    for _ in range(args.reps):
        before = _batches(metrics)
        cost, _ = await _measure(server, args.clients, args.requests, grpc_body)
        rows, count = (a - b for a, b in zip(_batches(metrics), before, strict=True))
        out.append((cost, rows / max(count, 1)))
    return out


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
