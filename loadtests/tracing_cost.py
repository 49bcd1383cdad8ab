"""Tracing cost: the same h2load traffic to model servers and routers with OpenTelemetry tracing
off, on with every trace sampled (ratio 1.0) and on with a tenth sampled (ratio 0.1), REST (V2
JSON over HTTP/1.1) and gRPC.

Usage: python -m loadtests.tracing_cost [--duration 4] [--warmup 0.5] [--reps 3]
                                        [--concurrency 1 32] [--tiers server router]
                                        [--protocols REST gRPC] [--server-cpu 0]
                                        [--load-cpu 1] [--no-pin] [--out FILE]

Tier ``server``: three ``turnout serve`` processes on the harness's mlp model (off, ``--trace-
endpoint`` with ``--trace-sample-ratio 1`` and ``0.1``). Tier ``router``: three ``turnout
router`` processes (the same three settings) in front of one untraced model server. The traced
processes export OTLP/HTTP to a sink in this process that reads and drops each export (the
SDK's batch processor sends one per 512 spans or 5 s). h2load sends no ``traceparent``, so each
request is a new trace, sampled at the ratio. Processes under test are pinned to the same core
and measured in turn (off, 1.0, 0.1, off, …). Besides throughput and latency, each process's
CPU time per request (user + system, from /proc; the warm-up apart) is recorded. Output:
Markdown rows (RESULTS.md, "Tracing cost") and JSON lines.
"""

from __future__ import annotations

import argparse
import http.server
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from loadtests import load, models
from loadtests.auth_cost import cpu_seconds
from loadtests.router_hop.bench import _start, _stop, _wait_ready
from loadtests.servers import free_port

SETTINGS = {"off": [], "1.0": ["--trace-sample-ratio", "1.0"],
            "0.1": ["--trace-sample-ratio", "0.1"]}


class Sink(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that reads each export and answers 200 (counts the bytes)."""

    def __init__(self) -> None:
        sink = self
        self.exports = self.received = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                sink.exports += 1
                sink.received += len(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


def start_tier(tier: str, repo: Path, work: Path, sink: Sink, cpu: int | None,
               before: Path | None = None) -> tuple[dict[str, tuple[int, int, int]], list]:
    """(http port, gRPC port, pid) per setting, and every process started (upstream too).
    ``before``: a checkout of the code before tracing, run as setting ``before``."""
    procs, ports = [], {}
    if tier == "router":  # one untraced model server behind the three routers, on its own
        http_port, grpc_port = free_port(), free_port()
        procs.append(_start(["serve", str(repo), "--http-port", str(http_port), "--grpc-port",
                             str(grpc_port), "--log-level", "warning"], None,
                            work / "upstream.log"))
        _wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready")
        routes = work / "routes.yaml"
        routes.write_text(yaml.safe_dump({"services": [{"name": "mlp", "variants": [
            {"name": "default", "weight": 1, "http": [f"http://127.0.0.1:{http_port}"],
             "grpc": [f"127.0.0.1:{grpc_port}"]}]}]}))
    settings = {"before": [], **SETTINGS} if before is not None else SETTINGS
    for label, flags in settings.items():
        traced = ["--trace-endpoint", sink.url, *flags] if flags else []
        http_port, grpc_port = free_port(), free_port()
        if tier == "server":
            argv = ["serve", str(repo)]
        else:
            argv = ["router", "--config", str(work / "routes.yaml"), "--admin-port", "0"]
        argv = [*argv, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                "--log-level", "warning", *traced]
        if label == "before":
            procs.append(subprocess.Popen(
                [*(["taskset", "-c", str(cpu)] if cpu is not None else []), sys.executable,
                 "-m", "serving.cli", *argv], cwd=before,
                stdout=(work / f"{tier}-before.log").open("wb"), stderr=subprocess.STDOUT))
        else:
            procs.append(_start(argv, cpu, work / f"{tier}-{label}.log"))
        ports[label] = (http_port, grpc_port, procs[-1].pid)
    for http_port, _, _ in ports.values():
        _wait_ready(f"http://127.0.0.1:{http_port}/v2/models/mlp/ready")
    return ports, procs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per h2load run")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--tiers", nargs="+", default=["server", "router"],
                    choices=["server", "router"])
    ap.add_argument("--protocols", nargs="+", default=["REST", "gRPC"], choices=["REST", "gRPC"])
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the code before "
                    "tracing (git worktree add DIR COMMIT): its model server/router joins as "
                    "setting 'before'")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines file (default: a temp dir)")
    args = ap.parse_args(argv)
    if load.h2load_path() is None:
        print("h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    cpu = None if args.no_pin else args.server_cpu
    load_cpu = None if args.no_pin else args.load_cpu
    work = Path(tempfile.mkdtemp(prefix="turnout-tracing-"))
    repo = models.repository(work, ["mlp"])
    out = args.out or work / "tracing.jsonl"
    sink = Sink()
    payloads = load.build_payloads(work / "payloads", "mlp", 1)
    rows: list[str] = []
    for tier in args.tiers:
        ports, procs = start_tier(tier, repo, work, sink, cpu, args.before)
        try:
            for protocol in args.protocols:
                payload = payloads["grpc" if protocol == "gRPC" else "rest-json"]
                port_of = {label: p[1] if protocol == "gRPC" else p[0]
                           for label, p in ports.items()}
                expected = {label: load.probe(payload, port) for label, port in port_of.items()}
                for concurrency in args.concurrency:
                    runs: dict[str, list[dict]] = {label: [] for label in ports}
                    for _ in range(args.reps):
                        for label, port in port_of.items():
                            runs[label].append(measure(payload, port, ports[label][2],
                                                       concurrency, args, load_cpu,
                                                       expected[label]))
                            runs[label][-1].update(tier=tier, protocol=protocol,
                                                   tracing=label, concurrency=concurrency)
                            with out.open("a") as fh:
                                fh.write(json.dumps(runs[label][-1]) + "\n")
                    rows.append(row(tier, protocol, concurrency, runs))
                    print(rows[-1], flush=True)
        finally:
            for proc in procs:
                _stop(proc)
    print(f"\nmlp batch 1, h2load {args.duration:g}s after {args.warmup:g}s warm-up x "
          f"{args.reps} (medians), processes under test on cpu {cpu}, h2load on cpu "
          f"{load_cpu}; {sink.exports} OTLP exports, {sink.received:,} bytes; raw: {out}")
    names = " / ".join(["before"] * (args.before is not None) + list(SETTINGS))
    print(f"| tier | protocol | concurrency | {'before req/s | ' * (args.before is not None)}"
          f"off req/s | ratio 1.0 req/s | ratio 0.1 req/s | CPU µs/request ({names}) | "
          f"p50 ms ({names}) |")
    print("|---|---|---|" + "---|" * (len(names.split(" / ")) + 2))
    print("\n".join(rows))
    return 0


def measure(payload: load.Payload, port: int, pid: int, concurrency: int,
            args: argparse.Namespace, load_cpu: int | None, expected: int) -> dict:
    """One h2load run after its warm-up, with the process's CPU time per request."""
    for _attempt in range(3):  # h2load now and then ends at once
        if args.warmup > 0:
            load.run_h2load(payload, port, concurrency, args.warmup, 0, load_cpu, expected)
        before = cpu_seconds(pid)
        result = load.run_h2load(payload, port, concurrency, args.duration, 0, load_cpu,
                                 expected)
        if result.get("completed"):
            break
    result["cpu_us_per_request"] = 1e6 * (cpu_seconds(pid) - before) / max(1, result["completed"])
    if not result.get("ok") or result["errors"] or not result["completed"]:
        raise RuntimeError(f"port {port} c={concurrency}: {result}")
    return result


def row(tier: str, protocol: str, concurrency: int, runs: dict[str, list[dict]]) -> str:
    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[label])

    first, *others = runs  # the baseline: "before" when measured, else "off"
    base = med(first, "rps")
    rps = [f"{base:,.0f}"] + [f"{med(label, 'rps'):,.0f} "
                              f"({100 * (med(label, 'rps') / base - 1):+.1f}%)"
                              for label in others]
    cpu = " / ".join(f"{med(label, 'cpu_us_per_request'):.0f}" for label in runs)
    p50 = " / ".join(f"{med(label, 'p50_ms'):.2f}" for label in runs)
    return f"| {tier} | {protocol} | {concurrency} | {' | '.join(rps)} | {cpu} | {p50} |"


if __name__ == "__main__":
    raise SystemExit(main())
