"""Router hop benchmark: the same closed-loop load sent directly to a model server and through
``turnout router``, over REST (V2 JSON) and gRPC; plus the two candidate upstream HTTP clients.

Usage: python loadtests/router_hop/bench.py [--seconds 10] [--concurrency 16]
Starts one ``turnout serve`` (an Echo model, inline execution, so the model costs ~nothing
and the hop is what is measured) and one ``turnout router`` subprocess, all on loopback.
Results are printed as a Markdown table (copy into RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000


async def rest_load(url: str, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                async with s.post(url, data=BODY) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - t)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


async def grpc_load(address: str, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    from serving.protocol import proto

    request = proto.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    payload = request.SerializeToString()
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def worker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                await call(payload)
                latencies.append(time.perf_counter() - t)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


async def client_hop(url: str, n: int) -> dict[str, float]:
    """Sequential requests per client library: the per-request cost the router would pay."""
    out = {}
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.post(url, data=BODY) as r:
                await r.read()
        t = time.perf_counter()
        for _ in range(n):
            async with s.post(url, data=BODY) as r:
                await r.read()
        out["aiohttp"] = (time.perf_counter() - t) / n * 1e6
    async with httpx.AsyncClient() as c:
        for _ in range(200):
            await c.post(url, content=BODY)
        t = time.perf_counter()
        for _ in range(n):
            await c.post(url, content=BODY)
        out["httpx"] = (time.perf_counter() - t) / n * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "models" / "m").mkdir(parents=True)
    (tmp / "models" / "m" / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": "turnout_test_runtimes:Echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]}))
    sp, sg, rp, rg = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'plugins'}:{ROOT}"}
    server = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", str(tmp / "models"),
                               "--http-port", str(sp), "--grpc-port", str(sg),
                               "--log-level", "warning"], env=env, cwd=ROOT)
    (tmp / "routes.yaml").write_text(yaml.safe_dump({"services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [f"http://127.0.0.1:{sp}"],
         "grpc": [f"127.0.0.1:{sg}"]}]}]}))
    router = subprocess.Popen([sys.executable, "-m", "serving.cli", "router", "--config",
                               str(tmp / "routes.yaml"), "--http-port", str(rp), "--grpc-port",
                               str(rg), "--admin-port", "0", "--log-level", "warning"],
                              env=env, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{sp}/v2/health/ready")
        wait_http(f"http://127.0.0.1:{rp}/v2/health/ready")
        rows = []
        for proto, direct, via, load in (
                ("REST", f"http://127.0.0.1:{sp}/v2/models/m/infer",
                 f"http://127.0.0.1:{rp}/v2/models/m/infer", rest_load),
                ("gRPC", f"127.0.0.1:{sg}", f"127.0.0.1:{rg}", grpc_load)):
            results = {}
            for name, target in (("direct", direct), ("router", via)):
                asyncio.run(load(target, 1, args.concurrency))  # warm up
                count, lat = asyncio.run(load(target, args.seconds, args.concurrency))
                results[name] = (count / args.seconds, percentile(lat, 50), percentile(lat, 99))
            d, r = results["direct"], results["router"]
            rows.append(f"| {proto} | {d[0]:.0f} | {r[0]:.0f} | {100 * (1 - r[0] / d[0]):.1f}% | "
                        f"{d[1]:.2f} | {r[1]:.2f} | {r[1] - d[1]:+.2f} | {d[2]:.2f} | {r[2]:.2f} |")
        hop = asyncio.run(client_hop(f"http://127.0.0.1:{sp}/v2/models/m/infer", 2000))
        print(f"concurrency {args.concurrency}, {args.seconds:g}s per run, cpus {os.cpu_count()}")
        print("| protocol | direct req/s | router req/s | loss | direct p50 ms | router p50 ms "
              "| added p50 ms | direct p99 ms | router p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"\nsequential upstream call cost: aiohttp {hop['aiohttp']:.0f} µs, "
              f"httpx {hop['httpx']:.0f} µs")
    finally:
        for proc in (router, server):
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
