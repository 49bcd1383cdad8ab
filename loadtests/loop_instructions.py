"""Instructions the model server's event loop executes per one-row request to a batched model:
``loadtests.loop_cost`` counted by valgrind's callgrind instead of timed (``loadtests.instructions``
counts a whole server or router process under h2load instead: sockets, threads and all).

Why: on a shared machine the loop's CPU time per request moves by 10-40% within minutes (the
neighbours' load, the caches), which hides changes of a few percent; the instruction count of
the same work repeats to within 1% (identical runs: 0.03%). Start-up and warm-up cancel out:
loop_cost runs at two request counts and the difference of the loop thread's instructions is
divided by the difference of the counts (both runs at once, one per core; callgrind runs a
process's threads one at a time, so each needs one core).

Usage: python -m loadtests.loop_instructions [--protocol grpc|rest] [--small 1000] [--large 4000]
Needs valgrind (Debian: ``apt-get install valgrind``); each run takes a minute or two.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def callgrind(command: Sequence[str], folder: Path, *, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
    """``command`` started under callgrind, one output file per thread in ``folder``."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [valgrind, "--tool=callgrind", "--separate-threads=yes", "--dump-instr=no", "-q",
         f"--callgrind-out-file={folder}/callgrind.out.%p", *command],
        cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main_thread_instructions(folder: Path) -> int:
    """Instructions of a callgrind run's first thread (a Python program's main thread) from
    its output file's ``summary:`` line."""
    files = sorted(folder.glob("callgrind.out.*-01"))
    if len(files) != 1:
        raise RuntimeError(f"expected one main-thread file in {folder}, found {len(files)}")
    for line in files[0].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"{files[0].name} has no summary line")


def per_unit(counts: dict[int, int]) -> float:
    """Instructions per unit of work from two runs that differ only in how many units."""
    (small, low), (large, high) = sorted(counts.items())
    return (high - low) / (large - small)


def measure(command_for: dict[int, list[str]]) -> float:
    """Run each command (keyed by its number of units) under callgrind at once and return the
    main thread's instructions per unit."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: (callgrind(cmd, Path(tmp) / str(n)), Path(tmp) / str(n))
                for n, cmd in command_for.items()}
        counts = {}
        for n, (proc, folder) in runs.items():
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"run of {n} units failed: {err.decode()[-2000:]}")
            counts[n] = main_thread_instructions(folder)
    return per_unit(counts)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loop_instructions")
    parser.add_argument("--protocol", choices=("grpc", "rest"), default="grpc")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=4000)
    args = parser.parse_args(argv)
    commands = {n: [sys.executable, "-m", "loadtests.loop_cost", "--protocol", args.protocol,
                    "--clients", str(args.clients), "--reps", "1", "--requests", str(n)]
                for n in (args.small, args.large)}
    instructions = measure(commands)
    print(f"{args.protocol} loop instructions per request: {instructions / 1000:.1f}k "
          f"(callgrind, {args.small} and {args.large} requests)")
    return {"instructions_per_request": instructions}


def cli() -> int:
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
