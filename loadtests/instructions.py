"""Instructions per request of the router or the model server, counted by callgrind.

Throughput on a shared 2-core machine moves by 5-10% from minute to minute, which hides a
regression of a few percent. Instruction counts do not move with the load around them
(``valgrind --tool=callgrind`` counts, it does not time): the process under test runs under
callgrind twice, for N and 3N requests, and the difference divided by 2N is what one request
costs, start-up and shutdown cancelled out. ``--ref`` runs the same at an older commit (a git
worktree), so a change is measured against what it changed.

Usage: python -m loadtests.instructions [--target router|server] [--protocol REST|gRPC]
                                        [--requests 1500] [--ref COMMIT] [--model mlp]

Needs valgrind and h2load (Debian: valgrind, nghttp2-client). Under callgrind Python runs
~50x slower: a run takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from loadtests import load, models
from loadtests.router_hop.bench import _start, _stop, _wait_ready
from loadtests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


def _callgrind(tree: Path, argv: list[str], out: Path, log: Path) -> subprocess.Popen:
    """``python -m serving.cli ARGV`` from ``tree`` under callgrind."""
    # a fixed hash seed: dict and set probing, hence the count, the same in every run
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
         sys.executable, "-m", "serving.cli", *argv],
        cwd=tree, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _send(payload: load.Payload, port: int, count: int) -> None:
    cmd = [load.h2load_path() or "h2load", "-n", str(count), "-c", "4", "-t", "1", "-m", "1",
           "-d", str(payload.body_file)]
    if payload.protocol != "grpc":
        cmd.append("--h1")
    for header in payload.headers:
        cmd += ["-H", header]
    done = subprocess.run([*cmd, f"http://127.0.0.1:{port}{payload.path}"],
                          capture_output=True, text=True, timeout=1800)
    if f"{count} succeeded" not in done.stdout:
        raise RuntimeError(f"h2load: {done.stdout[-800:]}")


def count(tree: Path, target: str, payload: load.Payload, requests: int, upstream: tuple[int, int],
          work: Path, model: str) -> int:
    """Instructions of one process of ``tree`` serving ``requests`` requests, start to exit."""
    http, grpc = free_port(), free_port()
    if target == "router":
        routes = work / "routes.yaml"
        routes.write_text(yaml.safe_dump({"services": [{"name": model, "variants": [
            {"name": "default", "weight": 1, "http": [f"http://127.0.0.1:{upstream[0]}"],
             "grpc": [f"127.0.0.1:{upstream[1]}"]}]}]}))
        argv = ["router", "--config", str(routes), "--admin-port", "0"]
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
    else:
        argv = ["serve", str(work / "models")]
        ready = f"http://127.0.0.1:{http}/v2/models/{model}/ready"
    out = work / f"callgrind-{tree.name}-{requests}.out"
    proc = _callgrind(tree, [*argv, "--http-port", str(http), "--grpc-port", str(grpc),
                             "--log-level", "warning"], out, work / f"{tree.name}.log")
    try:
        _wait_ready(ready, timeout=900)
        _send(payload, grpc if payload.protocol == "grpc" else http, requests)
    finally:
        _stop(proc)
        proc.wait(300)
    time.sleep(0.5)
    found = _TOTALS.search(out.read_bytes())
    if not found:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def per_request(tree: Path, args: argparse.Namespace, payload: load.Payload,
                upstream: tuple[int, int], work: Path) -> float:
    small = count(tree, args.target, payload, args.requests, upstream, work, args.model)
    large = count(tree, args.target, payload, 3 * args.requests, upstream, work, args.model)
    return (large - small) / (2 * args.requests)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["router", "server"], default="router")
    ap.add_argument("--protocol", choices=["REST", "gRPC"], default="REST")
    ap.add_argument("--model", default="mlp", choices=list(models.MODELS))
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--ref", default=None, help="a commit to compare with (a git worktree)")
    ap.add_argument("--against", default=None, help="with --ref: the commit to measure instead "
                    "of the working tree (a second worktree)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="turnout-icount-"))
    repo = models.repository(work, [args.model])
    payload = load.build_payloads(work / "payloads", args.model, 1)[
        "grpc" if args.protocol == "gRPC" else "rest-json"]
    trees = [ROOT]
    worktrees = []
    for ref in filter(None, (args.ref, args.against)):
        tree = work / f"ref-{ref[:10]}".replace("~", "_")
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref],
                       cwd=ROOT, check=True, capture_output=True)
        worktrees.append(tree)
    if worktrees:
        trees = worktrees if args.against else [worktrees[0], ROOT]
    sp, sg = free_port(), free_port()
    upstream = None
    if args.target == "router":  # the model server behind it runs natively
        upstream = _start(["serve", str(repo), "--http-port", str(sp), "--grpc-port",
                           str(sg), "--log-level", "warning"], None, work / "server.log")
        _wait_ready(f"http://127.0.0.1:{sp}/v2/models/{args.model}/ready")
    try:
        results = {tree: per_request(tree, args, payload, (sp, sg), work) for tree in trees}
    finally:
        if upstream is not None:
            _stop(upstream)
        for tree in worktrees:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           capture_output=True)
    labels = {ROOT: "working tree", **dict(zip(worktrees, filter(None, (args.ref, args.against)),
                                               strict=True))}
    for tree, value in results.items():
        label = labels[tree]
        print(f"{args.target} {args.protocol} {args.model}: {label}: {value:,.0f} instructions "
              "per request")
    if args.ref:
        old, new = results[trees[0]], results[trees[1]]
        print(f"change: {100 * (new / old - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
