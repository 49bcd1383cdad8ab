"""Router hop benchmark: the same h2load traffic sent directly to a model server and through
``turnout router``, over REST (V2 JSON) and gRPC, at several concurrencies.

Usage: python -m loadtests.router_hop.bench [--duration 8] [--reps 3] [--concurrency 1 8 32]
                                            [--models mlp xgb] [--protocols REST gRPC]
                                            [--server-cpu 0] [--router-cpu 1] [--load-cpu N]

The model server (the main harness's models: the ONNX MLP, whose predict is ~15 µs so the hop
is all there is to see, and the XGBoost model, whose predict costs what real models cost) is
pinned to ``--server-cpu`` and the router to ``--router-cpu``; h2load runs on ``--load-cpu``
(default: the router's core). On a 2-core machine neither choice is a deployment: with h2load
beside the router, the router has what h2load leaves of a core while the model server has a
whole one; with ``--load-cpu 0``, the router has its own core and h2load takes from the model
server in both columns. RESULTS.md reports both. The direct runs use the same pinning without a
router, so the only difference between the columns is the hop. gRPC is measured through two
routers: the default routes (ModelInfer reaches the Turnout model server as protobuf over HTTP)
and routes with ``grpc_via_http: false`` (a gRPC hop, as for other servers). Runs are
interleaved (direct, router, …) and medians of ``--reps`` are reported. Results are printed as
Markdown (copy into RESULTS.md) and written as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from loadtests import load, models
from loadtests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout}s")


def _start(argv: list[str], cpu: int | None, log: Path) -> subprocess.Popen:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return subprocess.Popen([*pin, sys.executable, "-m", "serving.cli", *argv], cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per h2load run")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--models", nargs="+", default=["mlp", "xgb"], choices=list(models.MODELS))
    ap.add_argument("--protocols", nargs="+", default=["REST", "gRPC"], choices=["REST", "gRPC"])
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--router-cpu", type=int, default=1, help="core of the router")
    ap.add_argument("--load-cpu", type=int, default=None,
                    help="core of h2load (default: the router's)")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines file (default: a temp dir)")
    args = ap.parse_args(argv)
    if load.h2load_path() is None:
        print("h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    server_cpu = None if args.no_pin else args.server_cpu
    router_cpu = None if args.no_pin else args.router_cpu
    load_cpu = None if args.no_pin else (router_cpu if args.load_cpu is None else args.load_cpu)

    work = Path(tempfile.mkdtemp(prefix="turnout-hop-"))
    repo = models.repository(work, args.models)
    sp, sg = free_port(), free_port()
    server = _start(["serve", str(repo), "--http-port", str(sp), "--grpc-port", str(sg),
                     "--log-level", "warning"], server_cpu, work / "server.log")
    # Two routers on the same core, used one at a time: the default routes (gRPC clients'
    # calls reach the Turnout model server as protobuf over HTTP: upstream.grpc_via_http is
    # "auto"), and routes that keep a gRPC hop (grpc_via_http: false, as for other servers).
    routers: dict[str, tuple[int, int]] = {}
    procs = []
    for path, via_http in (("router", "auto"), ("router-grpc-hop", False)):
        rp, rg = free_port(), free_port()
        routes = work / f"routes-{path}.yaml"
        routes.write_text(yaml.safe_dump({"upstream": {"grpc_via_http": via_http}, "services": [
            {"name": name, "variants": [
                {"name": "default", "weight": 1, "http": [f"http://127.0.0.1:{sp}"],
                 "grpc": [f"127.0.0.1:{sg}"]}]} for name in args.models]}))
        procs.append(_start(["router", "--config", str(routes), "--http-port", str(rp),
                             "--grpc-port", str(rg), "--admin-port", "0", "--log-level",
                             "warning"], router_cpu, work / f"{path}.log"))
        routers[path] = (rp, rg)
    out = args.out or work / "hop.jsonl"
    rows: list[str] = []
    try:
        for name in args.models:
            _wait_ready(f"http://127.0.0.1:{sp}/v2/models/{name}/ready")
        for rp, _ in routers.values():
            _wait_ready(f"http://127.0.0.1:{rp}/v2/health/ready")
        cells = [(name, protocol, load.build_payloads(work / "payloads", name, 1)[key])
                 for name in args.models for protocol, key in (("REST", "rest-json"),
                                                               ("gRPC", "grpc"))
                 if protocol in args.protocols]
        for model, protocol, payload in cells:
            paths = {"direct": (sp, sg), **routers}
            if protocol == "REST":  # the two routers differ only for gRPC clients
                del paths["router-grpc-hop"]
            ports = [grpc_port if protocol == "gRPC" else http_port
                     for http_port, grpc_port in paths.values()]
            expected = {port: load.probe(payload, port) for port in ports}
            for concurrency in args.concurrency:
                runs: dict[str, list[dict]] = {path: [] for path in paths}
                for _ in range(args.reps):
                    for path, (http_port, grpc_port) in paths.items():
                        port = grpc_port if protocol == "gRPC" else http_port
                        result = load.run_h2load(payload, port, concurrency, args.duration,
                                                 args.warmup, load_cpu, expected[port])
                        if not result.get("ok") or result["errors"]:
                            raise RuntimeError(f"{protocol} {path} c={concurrency}: {result}")
                        result.update(model=model, protocol=protocol, path=path,
                                      concurrency=concurrency)
                        runs[path].append(result)
                        with out.open("a") as fh:
                            fh.write(json.dumps(result) + "\n")
                d = runs["direct"]
                d_rps, d50 = _median(d, "rps"), _median(d, "p50_ms")
                for path in paths:
                    if path == "direct":
                        continue
                    r = runs[path]
                    r_rps, r50 = _median(r, "rps"), _median(r, "p50_ms")
                    label = protocol + (" (gRPC hop)" if path == "router-grpc-hop" else "")
                    rows.append(f"| {model} | {label} | {concurrency} | {d_rps:,.0f} | "
                                f"{r_rps:,.0f} | {100 * (1 - r_rps / d_rps):.1f}% | {d50:.2f} | "
                                f"{r50:.2f} | {r50 - d50:+.2f} | {_median(d, 'p99_ms'):.2f} | "
                                f"{_median(r, 'p99_ms'):.2f} |")
                    print(rows[-1], flush=True)
    finally:
        for proc in procs:
            _stop(proc)
        _stop(server)
    print(f"\nbatch 1, h2load {args.duration:g}s x {args.reps} (medians), "
          f"server on cpu {server_cpu}, router on cpu {router_cpu}, h2load on cpu {load_cpu}; "
          f"raw: {out}")
    print("| model | protocol | concurrency | direct req/s | router req/s | loss | direct p50 ms | "
          "router p50 ms | added p50 ms | direct p99 ms | router p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
