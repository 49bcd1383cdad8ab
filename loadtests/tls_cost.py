"""TLS cost: the same h2load traffic to a plain model server and to one serving TLS, REST (V2 JSON
over HTTP/1.1) and gRPC, at several concurrencies; and what a new connection costs (TCP connect,
handshake and one request, sequentially, from a Python client).

Usage: python -m loadtests.tls_cost [--duration 4] [--warmup 0.5] [--reps 3]
                                    [--concurrency 1 32] [--models mlp xgb]
                                    [--protocols REST gRPC] [--server-cpu 0] [--load-cpu 1]
                                    [--handshakes 200] [--out FILE]

Both servers are ``turnout serve`` on the harness's models folder, pinned to the same core and
run one at a time (plain, TLS, plain, …: a drift in the machine's load hits both alike); the
TLS one gets a certificate made for the run (ECDSA P-256, one CA, by the ``openssl`` command)
and nothing else differs. h2load keeps its connections open for the whole run, so the figures
are TLS's cost per request (record encryption and decryption on both sides); the handshake is
measured apart. Besides throughput and latency, each run records the model server's own CPU time
per request (user + system, from /proc, around the measured run only): on a machine shared with
other work, throughput moves with whatever else runs, while CPU time per request mostly does not.
Results are printed as Markdown (for RESULTS.md, "TLS cost") and written as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests import load, models
from loadtests.router_hop.bench import _start, _stop
from loadtests.servers import free_port


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA and a server certificate for 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    cert, key, csr = folder / "cert.pem", folder / "key.pem", folder / "server.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *argv: subprocess.run(["openssl", *argv], check=True,  # noqa: E731
                                       capture_output=True)
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=turnout benchmark CA")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(port: int, ca: Path | None, timeout: float = 90) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1) if ca is None else \
                http.client.HTTPSConnection("127.0.0.1", port, timeout=1,
                                            context=ssl.create_default_context(cafile=ca))
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server on {port} not ready in {timeout}s")


def connection_cost(port: int, ca: Path | None, count: int) -> dict[str, float]:
    """p50/p99 ms of a new connection answering one GET /v2/health/live, one after another."""
    context = ssl.create_default_context(cafile=ca) if ca is not None else None
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    times = []
    for _ in range(count):
        started = time.perf_counter()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(request)
        while sock.recv(65536):
            pass
        sock.close()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per h2load run")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--models", nargs="+", default=["mlp", "xgb"], choices=list(models.MODELS))
    ap.add_argument("--protocols", nargs="+", default=["REST", "gRPC"], choices=["REST", "gRPC"])
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--handshakes", type=int, default=200,
                    help="sequential new connections timed per server (0: skip)")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines file (default: a temp dir)")
    args = ap.parse_args(argv)
    if load.h2load_path() is None:
        print("h2load not found (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    server_cpu = None if args.no_pin else args.server_cpu
    load_cpu = None if args.no_pin else args.load_cpu

    work = Path(tempfile.mkdtemp(prefix="turnout-tls-"))
    repo = models.repository(work, args.models)
    ca, cert, key = make_certificates(work / "pki")
    servers: dict[str, tuple[int, int, Path | None]] = {}
    procs = []
    pids: dict[str, int] = {}
    for label, flags, trust in (("plain", [], None),
                                ("TLS", ["--tls-cert", str(cert), "--tls-key", str(key)], ca)):
        http_port, grpc_port = free_port(), free_port()
        procs.append(_start(["serve", str(repo), "--http-port", str(http_port), "--grpc-port",
                             str(grpc_port), "--log-level", "warning", *flags], server_cpu,
                            work / f"server-{label}.log"))
        servers[label] = (http_port, grpc_port, trust)
        pids[label] = procs[-1].pid
    out = args.out or work / "tls.jsonl"
    rows: list[str] = []
    handshake_rows: list[str] = []
    try:
        for http_port, _, trust in servers.values():
            _wait_ready(http_port, trust)
        cells = [(name, protocol, load.build_payloads(work / "payloads", name, 1)[key_])
                 for name in args.models for protocol, key_ in (("REST", "rest-json"),
                                                                ("gRPC", "grpc"))
                 if protocol in args.protocols]
        for model, protocol, payload in cells:
            expected = {label: load.probe(payload, grpc_port if protocol == "gRPC" else http_port,
                                          trust)
                        for label, (http_port, grpc_port, trust) in servers.items()}
            for concurrency in args.concurrency:
                runs: dict[str, list[dict]] = {label: [] for label in servers}
                for _ in range(args.reps):
                    for label, (http_port, grpc_port, trust) in servers.items():
                        port = grpc_port if protocol == "gRPC" else http_port
                        scheme = "https" if trust else "http"
                        if args.warmup > 0:  # apart, so the CPU time below is the run's alone
                            load.run_h2load(payload, port, concurrency, args.warmup, 0, load_cpu,
                                            expected[label], scheme=scheme)
                        before = cpu_seconds(pids[label])
                        result = load.run_h2load(payload, port, concurrency, args.duration, 0,
                                                 load_cpu, expected[label], scheme=scheme)
                        used = cpu_seconds(pids[label]) - before
                        if not result.get("ok") or result["errors"]:
                            raise RuntimeError(f"{protocol} {label} c={concurrency}: {result}")
                        result["server_cpu_us_per_request"] = round(
                            1e6 * used / max(result["completed"], 1), 2)
                        result.update(model=model, protocol=protocol, server=label,
                                      concurrency=concurrency)
                        runs[label].append(result)
                        with out.open("a") as fh:
                            fh.write(json.dumps(result) + "\n")
                p, t = runs["plain"], runs["TLS"]

                def med(rs: list[dict], field: str) -> float:
                    return statistics.median(r[field] for r in rs)
                cpu = "server_cpu_us_per_request"
                rows.append(f"| {model} | {protocol} | {concurrency} | {med(p, cpu):.1f} | "
                            f"{med(t, cpu):.1f} | {med(t, cpu) - med(p, cpu):+.1f} | "
                            f"{med(p, 'rps'):,.0f} | {med(t, 'rps'):,.0f} | "
                            f"{100 * (1 - med(t, 'rps') / med(p, 'rps')):.1f}% "
                            f"| {med(p, 'p50_ms'):.2f} | {med(t, 'p50_ms'):.2f} | "
                            f"{med(p, 'p99_ms'):.2f} | {med(t, 'p99_ms'):.2f} |")
                print(rows[-1], flush=True)
        if args.handshakes:
            for label, (http_port, _, trust) in servers.items():
                cost = connection_cost(http_port, trust, args.handshakes)
                with out.open("a") as fh:
                    fh.write(json.dumps({"kind": "connection", "server": label, **cost}) + "\n")
                handshake_rows.append(f"| {label} | {cost['p50_ms']:.2f} | {cost['p99_ms']:.2f} |")
    finally:
        for proc in procs:
            _stop(proc)
    print(f"\nbatch 1, h2load {args.duration:g}s after {args.warmup:g}s warm-up x {args.reps} "
          f"(medians), servers on cpu {server_cpu}, h2load on cpu {load_cpu}; raw: {out}")
    print("| model | protocol | concurrency | plain CPU µs/req | TLS CPU µs/req | TLS adds | "
          "plain req/s | TLS req/s | loss | plain p50 ms | TLS p50 ms | plain p99 ms | "
          "TLS p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if handshake_rows:
        print(f"\nnew connection + one request, {args.handshakes} in a row (Python client):")
        print("| server | p50 ms | p99 ms |\n|---|---|---|")
        print("\n".join(handshake_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
