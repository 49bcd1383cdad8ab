"""Turnout's benchmark: one command that measures Turnout, the anchors and the bare servers.

    python -m loadtests.run                 # the full run (~25 min): all servers, models, protocols
    python -m loadtests.run --quick         # seconds: Turnout only, mlp, c=1,8, one repetition
    python -m loadtests.run --servers turnout,bare-rest --models mlp --protocols rest-json

What one run does, in order:

1. builds the fixed-seed models into ``loadtests/.work/models`` (reused when built);
2. installs MLServer and KServe into their own venvs under ``loadtests/.anchors`` (reused);
3. measures each model's raw in-process floor (predict per call, batched), pinned to the
   server core, before every repetition and after the last (the machine's speed moves between
   minutes: each repetition is also held against the floor read around it);
4. for each repetition, for each server (the order rotates each repetition, so servers are
   interleaved): starts it pinned to ``--server-cpu`` (cold start = process start until every
   model is ready on every protocol), records idle RSS, then for each model, protocol, batch and
   concurrency probes once with a real client and drives it with h2load pinned to ``--load-cpu``,
   sampling the server's RSS for its peak; then stops it;
5. also times a cold start with the sklearn model alone, and Turnout's idle RSS with
   ``--workers 4`` against one;
6. writes every measurement as a JSON line (``results/run-<time>.jsonl``), then RESULTS.md and
   the plots from the medians (``python -m loadtests.report FILE.jsonl`` redoes that step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from loadtests import anchors, load, models, report, servers

ROOT = Path(__file__).resolve().parent

FULL = {"servers": list(servers.ALL_SERVERS), "models": list(models.MODELS),
        "protocols": list(servers.PROTOCOLS), "concurrency": [1, 8, 32, 64], "batches": [1, 32],
        "reps": 3, "duration": 1.5, "warmup": 0.3}
QUICK = {"servers": ["turnout"], "models": ["mlp"], "protocols": list(servers.PROTOCOLS),
         "concurrency": [1, 8], "batches": [1], "reps": 1, "duration": 0.5, "warmup": 0.1}


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: Turnout only, mlp, c=1,8, batch 1, 1 repetition")
    p.add_argument("--servers", type=_csv(str), help=f"any of {','.join(servers.ALL_SERVERS)}")
    p.add_argument("--models", type=_csv(str), help=f"any of {','.join(models.MODELS)}")
    p.add_argument("--protocols", type=_csv(str), help=f"any of {','.join(servers.PROTOCOLS)}")
    p.add_argument("--concurrency", type=_csv(int), help="e.g. 1,8,32,64")
    p.add_argument("--batches", type=_csv(int), help="rows per request, e.g. 1,32")
    p.add_argument("--reps", type=int, help="repetitions (medians are reported)")
    p.add_argument("--duration", type=float, help="seconds measured per run")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load before each run")
    p.add_argument("--server-cpu", type=int, default=0, help="core the servers are pinned to")
    p.add_argument("--load-cpu", type=int, default=1, help="core h2load (and the harness) use")
    p.add_argument("--no-pin", action="store_true", help="do not pin anything")
    p.add_argument("--turnout-args", default="",
                   help="extra flags for turnout serve, e.g. '--workers 2'")
    p.add_argument("--workers-rss", type=int, default=4,
                   help="also measure Turnout's idle RSS with this many workers (0: skip)")
    p.add_argument("--no-floor", action="store_true", help="skip the in-process floor")
    p.add_argument("--no-cold-start", action="store_true",
                   help="skip the extra single-model cold starts and the workers' RSS")
    p.add_argument("--no-install", action="store_true",
                   help="skip anchors whose venv is missing instead of installing it")
    p.add_argument("--out", type=Path,
                   help="where results/, RESULTS.md and the plots go (default: loadtests/, "
                        "or loadtests/.work/quick with --quick)")
    p.add_argument("--work", type=Path, default=ROOT / ".work", help="scratch folder")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = ROOT / ".work" / "quick" if args.quick else ROOT
    for name in args.servers:
        if name not in servers.DEFS:
            p.error(f"unknown server {name!r}")
    for name in args.models:
        if name not in models.MODELS:
            p.error(f"unknown model {name!r}")
    for name in args.protocols:
        if name not in servers.PROTOCOLS:
            p.error(f"unknown protocol {name!r}")
    return args


class Recorder:
    """Appends JSON lines to the run's file and echoes a short line per record."""

    def __init__(self, path: Path, quiet: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a")
        self.quiet = quiet

    def __call__(self, kind: str, **fields) -> dict:
        record = {"kind": kind, "t": round(time.time(), 3), **fields}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()


def log(msg: str) -> None:
    print(msg, flush=True)


def _pin(cpus: Iterable[int] | None) -> None:
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


class RssSampler(threading.Thread):
    def __init__(self, server: servers.Running, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.server.rss_bytes())
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.server.rss_bytes())
        return self.peak


def _versions() -> dict:
    out = {"python": platform.python_version()}
    try:
        out["turnout_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT.parent, capture_output=True,
            text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "serving", "runtimes"],
                               cwd=ROOT.parent, capture_output=True, text=True).stdout.strip()
        out["turnout_dirty"] = bool(dirty)
    except OSError:
        pass
    h2 = load.h2load_path()
    if h2:
        out["h2load"] = subprocess.run([h2, "--version"], capture_output=True,
                                       text=True).stdout.strip()
    out.update(anchors.VERSIONS)
    return out


def _machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "loadavg": os.getloadavg()}


def measure_floor(args, artifacts, record, rep: int = 0) -> None:
    """The models' in-process floor, recorded with ``rep``: measured before every repetition
    and after the last, so each repetition's servers compare with the floor of the same
    minutes (this machine's speed moves by a third within an hour)."""
    seconds = 0.1 if args.quick else 1.0
    batches = tuple(sorted({1, *args.batches, 64}))
    _pin(None if args.no_pin else [args.server_cpu])
    try:
        # Turnout serves the torch program by its verified ONNX copy where that is faster:
        # the ONNX twin's floor is measured beside the program's.
        names = [*args.models, *(["torch-onnx"] if "torch" in args.models
                                 and "torch-onnx" not in args.models else [])]
        for name in names:
            # The heavier model's best batch may lie above 64 ("raw batched floor").
            sizes = batches + (128,) if name in ("torch", "torch-onnx") else batches
            for row in models.floor(name, artifacts[name], batches=sizes, seconds=seconds):
                record("floor", rep=rep, **row)
                log(f"  floor {name:5s} batch {row['batch']:3d}: {row['us_per_call']:9.1f} µs/call"
                    f"  {row['rows_per_s']:12,.0f} rows/s")
    finally:
        _pin(None if args.no_pin else [args.load_cpu])


# The heavier model's floor is also read around each of its load cells (the torch program at
# its best batch, one second just before and one just after): this machine's speed moves by a
# tenth within seconds, faster than the readings around a whole repetition can follow.
CELL_FLOOR_MODEL, CELL_FLOOR_BATCH = "torch", 128


class CellFloor:
    """Reads the heavier model's floor on the server's core, its predictor loaded once."""

    def __init__(self, args, path: Path) -> None:
        self.args, self.path = args, path
        self._predict = None

    def read(self) -> float:
        args = self.args
        _pin(None if args.no_pin else [args.server_cpu])
        try:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                if self._predict is None:
                    self._predict = models.load_predictor(CELL_FLOOR_MODEL, self.path)
                row = models.timed_floor(self._predict, CELL_FLOOR_MODEL, CELL_FLOOR_BATCH,
                                         0.1 if args.quick else 1.0)
            return round(row["rows_per_s"], 1)
        finally:
            _pin(None if args.no_pin else [args.load_cpu])


def serve_and_load(args, name, rep, artifacts, payloads, record, cpu) -> None:
    defn = servers.DEFS[name]
    served = [m for m in args.models if m in defn.models]
    protocols = [p for p in args.protocols if p in defn.protocols]
    if not served or not protocols:
        return
    run_dir = args.work / "run"
    server = servers.start(name, run_dir, artifacts, served, cpu, shlex.split(args.turnout_args)
                           if defn.role == "turnout" else [], args.work / "logs")
    try:
        try:
            ready_s = server.wait_ready(served)
        except RuntimeError as exc:
            record("server_error", server=name, rep=rep, error=str(exc)[-2000:])
            log(f"  {name}: FAILED TO START: {exc}")
            return
        for model, reason in server.failed.items():
            record("server_error", server=name, rep=rep, model=model,
                   error=f"model {model} failed to load: {reason[:1500]}")
            log(f"  {name}: model {model} FAILED TO LOAD: {reason[:300]}")
        served = [m for m in served if m not in server.failed]
        time.sleep(0.5 if args.quick else 1.0)
        idle = server.rss_bytes()
        record("start", server=name, rep=rep, models=served, cold_start_s=round(ready_s, 3),
               idle_rss_mb=round(idle / 2**20, 1), idle_pss_mb=round(server.pss_bytes() / 2**20, 1),
               processes=len(server.pids()))
        log(f"  {name}: ready in {ready_s:.2f}s, idle RSS {idle / 2**20:.0f} MiB")
        sampler = RssSampler(server)
        sampler.start()
        try:
            for model in served:
                for protocol in protocols:
                    for batch in args.batches:
                        payload = payloads[(model, batch)][protocol]
                        payload = servers.with_metadata(defn, payload)
                        port = server.grpc_port if protocol == "grpc" else server.http_port
                        _load_cell(args, server, rep, payload, port, record,
                                   args.cell_floor if model == CELL_FLOOR_MODEL else None)
        finally:
            peak = sampler.stop()
        record("peak", server=name, rep=rep, peak_rss_mb=round(peak / 2**20, 1))
    finally:
        server.stop()


def _load_cell(args, server, rep, payload, port, record,
               cell_floor: CellFloor | None = None) -> None:
    base = {"server": server.name, "rep": rep, "model": payload.model,
            "protocol": payload.protocol, "batch": payload.batch}
    wanted = server.defn.concurrency
    concurrencies = [c for c in args.concurrency if wanted is None or c in wanted]
    for concurrency in concurrencies:
        if server.proc.poll() is not None:
            record("load", **base, concurrency=concurrency, ok=False,
                   error=f"server exited ({server.proc.returncode})")
            return
        try:
            body_size = load.probe(payload, port, expected=expected_output(args, payload))
        except load.ProbeMismatch as exc:
            record("load", **base, concurrency=concurrency, ok=False,
                   error=f"wrong answer: {str(exc)[:300]}")
            log(f"    {payload.model:4s} {payload.protocol:11s} b{payload.batch:<3d} "
                f"WRONG ANSWER: {str(exc)[:160]}")
            return
        except load.ProbeError as exc:
            # An anchor that fails its first probe lacks the protocol (MLServer has no binary
            # extension); anything else failing a probe is a failure, and reported as one.
            if concurrency == concurrencies[0] and server.defn.role == "anchor":
                record("unsupported", **base, reason=str(exc)[:500])
                log(f"    {payload.model:4s} {payload.protocol:11s} b{payload.batch:<3d} "
                    f"not measured: {str(exc)[:120]}")
                return
            record("load", **base, concurrency=concurrency, ok=False,
                   error=f"probe failed: {str(exc)[:300]}")
            continue
        cpu = None if args.no_pin else args.load_cpu
        floors = {}
        if cell_floor is not None:
            floors["floor_before"] = cell_floor.read()
        result = load.run_h2load(payload, port, concurrency, args.duration, args.warmup, cpu,
                                 expected_body=body_size)
        if cell_floor is not None:
            floors["floor_after"] = cell_floor.read()
        rec = record("load", **base, concurrency=concurrency, **result, **floors)
        if rec.get("ok"):
            # A server too slow to finish a request within the run has no latencies.
            p50, p99 = (f"{rec[k]:8.2f}" if rec.get(k) is not None else "     n/a"
                        for k in ("p50_ms", "p99_ms"))
            log(f"    {payload.model:4s} {payload.protocol:11s} b{payload.batch:<3d} "
                f"c{concurrency:<3d} {rec['rps']:9,.0f} req/s  p50 {p50}  "
                f"p99 {p99} ms  errors {rec['errors']}")
        else:
            log(f"    {payload.model:4s} {payload.protocol:11s} b{payload.batch:<3d} "
                f"c{concurrency:<3d} FAILED: {rec.get('error')}")


_EXPECTED: dict[tuple[str, int], object] = {}


def expected_output(args, payload):
    """The model's own first output for the payload's rows, computed in-process once."""
    key = (payload.model, payload.batch)
    if key not in _EXPECTED:
        artifact = models.artifact_path(args.work / "models", payload.model)
        out = models.load_predictor(payload.model, artifact)(models.rows(payload.model,
                                                                         payload.batch))
        _EXPECTED[key] = out[0] if isinstance(out, list) else out
    return _EXPECTED[key]


def cold_starts(args, artifacts, rep, record, cpu) -> None:
    """A start with the sklearn model alone (the cold-start target), and Turnout's RSS with N
    workers against one."""
    if "iris" in args.models:
        for name in args.servers:
            # Turnout every repetition (it has a target); the anchors once, for comparison.
            if "iris" not in servers.DEFS[name].models or (name != "turnout" and rep > 0):
                continue
            starts = ["warm"]
            if name == "turnout" and rep == 0:
                starts.insert(0, "empty")  # the very first start compiles iris (compile: onnx)
            for cache in starts:
                _cold_start(args, name, artifacts, rep, record, cpu, cache)
    if args.workers_rss > 1 and "turnout" in args.servers and rep == 0:
        extra = [*shlex.split(args.turnout_args), "--workers", str(args.workers_rss)]
        server = servers.start("turnout", args.work / "run-workers", artifacts, args.models,
                               cpu, extra, args.work / "logs-workers")
        try:
            ready_s = server.wait_ready(args.models)
            time.sleep(2.0)
            rss = server.rss_bytes()
            pss = server.pss_bytes()
            record("cold", server="turnout", rep=rep, models=args.models,
                   workers=args.workers_rss, cold_start_s=round(ready_s, 3),
                   idle_rss_mb=round(rss / 2**20, 1), idle_pss_mb=round(pss / 2**20, 1),
                   processes=len(server.pids()))
            log(f"  turnout --workers {args.workers_rss}: ready in {ready_s:.2f}s, idle RSS "
                f"{rss / 2**20:.0f} MiB, PSS {pss / 2**20:.0f} MiB in {len(server.pids())} processes")
        except RuntimeError as exc:
            record("server_error", server="turnout", rep=rep, workers=args.workers_rss,
                   error=str(exc)[-2000:])
        finally:
            server.stop()


def _cold_start(args, name, artifacts, rep, record, cpu, cache: str) -> None:
    """One start of ``name`` serving iris alone; ``cache`` "empty" gives Turnout a fresh
    compile cache, "warm" the one earlier starts filled."""
    env = {"XDG_CACHE_HOME": str(args.work / f"turnout-cache-empty-{time.time_ns()}")} \
        if cache == "empty" else None
    server = servers.start(name, args.work / "run-cold", artifacts, ["iris"], cpu,
                           shlex.split(args.turnout_args) if name == "turnout" else [],
                           args.work / "logs-cold", env=env)
    try:
        ready_s = server.wait_ready(["iris"])
        if server.failed:
            raise RuntimeError(f"iris failed to load: {server.failed['iris'][:1500]}")
        time.sleep(1.0)
        record("cold", server=name, rep=rep, models=["iris"], workers=1,
               compile_cache=cache if name == "turnout" else None, cold_start_s=round(ready_s, 3),
               idle_rss_mb=round(server.rss_bytes() / 2**20, 1),
               idle_pss_mb=round(server.pss_bytes() / 2**20, 1))
        log(f"  {name} (iris alone{', empty compile cache' if cache == 'empty' else ''}): "
            f"ready in {ready_s:.2f}s, "
            f"idle RSS {server.rss_bytes() / 2**20:.0f} MiB")
    except RuntimeError as exc:
        record("server_error", server=name, rep=rep, error=str(exc)[-2000:])
    finally:
        server.stop()


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stop cleanly (servers stopped, JSON lines closed) on Ctrl-C or SIGTERM, also when started
    # in the background, where SIGINT would otherwise be ignored.
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    if load.h2load_path() is None:
        print("h2load not found: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2 and not args.no_pin:
        log("one CPU only: not pinning")
        args.no_pin = True
    cpu = None if args.no_pin else args.server_cpu
    _pin(None if args.no_pin else [args.load_cpu])
    args.work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jsonl = args.out / "results" / f"{'quick' if args.quick else 'run'}-{stamp}.jsonl"
    record = Recorder(jsonl)
    started = time.time()
    try:
        record("meta", quick=args.quick, servers=args.servers, models=args.models,
               protocols=args.protocols, concurrency=args.concurrency, batches=args.batches,
               reps=args.reps, duration_s=args.duration, warmup_s=args.warmup,
               pinned=not args.no_pin, server_cpu=args.server_cpu, load_cpu=args.load_cpu,
               turnout_args=args.turnout_args, versions=_versions(), machine=_machine())
        log(f"building models into {args.work / 'models'}")
        artifacts = models.build(args.work / "models", args.models)
        for name in [s for s in args.servers if s in servers.ANCHORS]:
            if not anchors.is_ready(name):
                if args.no_install:
                    log(f"skipping {name}: {servers.available(name)}")
                    args.servers.remove(name)
                    continue
                try:
                    anchors.ensure(name, log=log)
                except Exception as exc:
                    record("server_error", server=name, rep=-1, error=f"install: {exc}")
                    log(f"skipping {name}: {exc}")
                    args.servers.remove(name)
        payloads = {(m, b): load.build_payloads(args.work / "payloads", m, b)
                    for m in args.models for b in args.batches}
        args.cell_floor = CellFloor(args, artifacts[CELL_FLOOR_MODEL]) \
            if CELL_FLOOR_MODEL in args.models and not args.no_floor else None
        order = list(args.servers)
        for rep in range(args.reps):
            if not args.no_floor:
                log(f"in-process floor (before repetition {rep + 1})")
                measure_floor(args, artifacts, record, rep)
            shift = rep % len(order)
            rotated = order[shift:] + order[:shift]
            log(f"repetition {rep + 1}/{args.reps}: {', '.join(rotated)}  "
                f"(load average {os.getloadavg()[0]:.2f})")
            record("rep", rep=rep, order=rotated, loadavg=os.getloadavg())
            for name in rotated:
                serve_and_load(args, name, rep, artifacts, payloads, record, cpu)
            if not args.no_cold_start and not args.quick:
                cold_starts(args, artifacts, rep, record, cpu)
        if not args.no_floor and args.reps:
            log("in-process floor (after the last repetition)")
            measure_floor(args, artifacts, record, args.reps)
        record("end", elapsed_s=round(time.time() - started, 1), loadavg=os.getloadavg())
    finally:
        record.close()
    log(f"results: {jsonl} ({time.time() - started:.0f}s)")
    written = report.write(jsonl, args.out)
    for path in written:
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
