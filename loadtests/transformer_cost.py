"""Transformer cost: what a transformer in front of a predictor adds to a request.

Usage: python -m loadtests.transformer_cost [--requests 2000] [--warmup 200]

Starts one ``turnout serve`` predictor (scikit-learn iris, the README's example model) and two
transformers in front of it (examples/transformer's CsvToIris), one calling the predictor over
REST V2 (binary tensors), one over gRPC, all on loopback with their default settings. A
keep-alive Python client (httpx) then sends ``--requests`` sequential V2 JSON requests of one
row to each: the predictor directly (FP32 features), then each transformer (the same row as CSV
text). Prints p50/p99 latency per path as Markdown; the difference is the transformer's hop
(decode, preprocess, the call, postprocess, encode).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "transformer" / "transformer"
FEATURES = [5.1, 3.5, 1.4, 0.2]


def _serve(procs: list[subprocess.Popen], *args: str) -> tuple[int, int]:
    http, grpc = free_port(), free_port()
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", *args, "--http-port", str(http),
         "--grpc-port", str(grpc)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return http, grpc


def _ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server on {port} not ready")


def _latencies(port: int, body: dict, requests: int, warmup: int) -> list[float]:
    url = f"http://127.0.0.1:{port}/v2/models/iris/infer"
    with httpx.Client() as client:
        for _ in range(warmup):
            assert client.post(url, json=body).status_code == 200
        out = []
        for _ in range(requests):
            started = time.perf_counter()
            answer = client.post(url, json=body)
            out.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, str(ROOT / "examples" / "make_models.py"), work],
                       check=True, capture_output=True)
        try:
            predictor, predictor_grpc = _serve(procs, f"{work}/iris/2", "--name", "iris")
            transformer = ("--model-class", "transformer:CsvToIris", "--name", "iris")
            via_rest, _ = _serve(procs, str(EXAMPLE), *transformer,
                                 "--transformer-for", f"127.0.0.1:{predictor}")
            via_grpc, _ = _serve(procs, str(EXAMPLE), *transformer, "--predictor-protocol",
                                 "grpc-v2", "--transformer-for", f"127.0.0.1:{predictor_grpc}")
            for port in (predictor, via_rest, via_grpc):
                _ready(port)
            direct = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                  "data": FEATURES}]}
            text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                "data": [",".join(map(str, FEATURES))]}]}
            print("| path | p50 ms | p99 ms |\n| --- | ---: | ---: |")
            for label, port, body in (("predictor directly", predictor, direct),
                                      ("transformer, REST V2 hop", via_rest, text),
                                      ("transformer, gRPC hop", via_grpc, text)):
                lat = _latencies(port, body, args.requests, args.warmup)
                print(f"| {label} | {statistics.median(lat) * 1e3:.2f} | "
                      f"{lat[int(len(lat) * 0.99)] * 1e3:.2f} |")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)


if __name__ == "__main__":
    main()
