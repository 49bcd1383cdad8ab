"""gRPC engines side by side with the bare grpcio reference (issue #19, item 4).

Why: the goal is Turnout's gRPC edge >= 1.3x bare grpcio on the MLP at c=32, so
grpcio itself is the ceiling; this runs the same h2load cell (MLP, gRPC, c=32)
against bare-grpc and Turnout with each --grpc-engine, one run.py call per engine,
so the figures share settings. Usage:
    .venv/bin/python -m loadtests.grpc_engines --duration 5 --engines threaded,aio,loop
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="threaded,aio,loop", help="Turnout --grpc-engine values")
    p.add_argument("--concurrency", default="32")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "loadtests" / "grpc_engine_runs")
    a = p.parse_args(argv)
    for engine in a.engines.split(","):
        servers = "bare-grpc,turnout" if engine == a.engines.split(",")[0] else "turnout"
        cmd = [sys.executable, "-m", "loadtests.run", "--servers", servers, "--models", "mlp",
               "--protocols", "grpc", "--concurrency", a.concurrency, "--batches", "1",
               "--reps", str(a.reps), "--duration", str(a.duration), "--warmup", str(a.warmup),
               "--no-floor", "--no-cold-start", "--no-install",
               "--turnout-args", f"--grpc-engine {engine}", "--out", str(a.out / engine)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
