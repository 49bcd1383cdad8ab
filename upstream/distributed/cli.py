"""``turnout train -f pytorchjob.yaml``: a Training Operator PyTorchJob on this machine.

    turnout train -f JOB.yaml [--state-dir DIR] [--output DIR] [--checkpoint-dir DIR] [--fresh]
                  [--processes N] [--max-restarts N] [--register NAME] [--alias ALIAS]
                  [--tracking-uri URI]
    turnout train -f JOB.yaml --render [-o OUT.yaml]

The job runs as (Master + Worker replicas) x nprocPerNode processes on torch.distributed (DDP,
gloo) under PyTorch's elastic agent: one line per epoch from rank 0, a line when a worker dies
and the group restarts from the last checkpoint, then the model folder's test metrics (and the
registered version). Checkpoints default to ``<state-dir>/distributed/NAME/checkpoints``, so
running the job again after a crash resumes it (``--fresh`` starts over); the model folder to
``<state-dir>/distributed/NAME/model-<time>``. ``--render`` prints the manifest a cluster's
Training Operator gets (checked against its admission rules). Exit status: 0 done, 1 the job
failed, 2 bad input.

Importing this module imports neither torch nor MLflow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "turnout train"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to a ``turnout`` command line."""
    parser = subparsers.add_parser(
        "train", help="distributed PyTorch training: a PyTorchJob run on this machine",
        description="Run a Kubeflow Training Operator PyTorchJob (kubeflow.org/v1) on this "
                    "machine: its replicas x nprocPerNode processes on torch.distributed (DDP, "
                    "gloo), checkpointed every epoch and restarted after a worker dies; the "
                    "model folder turnout serve loads (docs/tuning.md).")
    parser.add_argument("-f", "--file", dest="file", type=Path, required=True,
                        metavar="JOB.yaml", help="the PyTorchJob manifest")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state folder (default $TURNOUT_STATE_DIR or .turnout)")
    parser.add_argument("--output", type=Path, default=None, metavar="DIR",
                        help="the model folder to write (must not exist)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR",
                        help="checkpoints (default <state-dir>/distributed/NAME/checkpoints)")
    parser.add_argument("--fresh", action="store_true",
                        help="remove the job's checkpoints first instead of resuming from them")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="override the number of processes the manifest gives")
    parser.add_argument("--max-restarts", type=int, default=None, metavar="N",
                        help="override the restarts the manifest allows")
    parser.add_argument("--register", default=None, metavar="NAME",
                        help="register the model folder as a new version of NAME")
    parser.add_argument("--alias", default=None, metavar="ALIAS",
                        help="with --register: move ALIAS to the new version")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="the MLflow registry (default $MLFLOW_TRACKING_URI, else "
                        "<state-dir>/registry.db)")
    parser.add_argument("--render", action="store_true",
                        help="print the manifest for a cluster's Training Operator; run nothing")
    parser.add_argument("-o", "--out", type=Path, default=None, metavar="OUT.yaml",
                        help="with --render: write it here instead")
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        args = _parse(list(sys.argv[1:] if args is None else args))
    from upstream.distributed.job import JobError, dump, load_job, local_plan, render
    from upstream.distributed.launch import DistributedError, run

    try:
        job = load_job(args.file)
        if args.render:
            text = dump(render(job))
            if args.out is None:
                sys.stdout.write(text)
            else:
                args.out.write_text(text)
                print(f"rendered {job.metadata.name} to {args.out}")
            return 0
        plan = local_plan(job)
        for name in ("processes", "max_restarts"):
            value = getattr(args, name)
            if value is not None and value < (1 if name == "processes" else 0):
                raise JobError(f"--{name.replace('_', '-')}: {value} is too small")
        if args.alias and not args.register:
            raise JobError("--alias needs --register NAME")
        state = args.state_dir or Path(os.environ.get("TURNOUT_STATE_DIR") or ".turnout")
        work = state / "distributed" / plan.name
        checkpoints = args.checkpoint_dir or work / "checkpoints"
        if args.fresh and checkpoints.exists():
            shutil.rmtree(checkpoints)
        output = args.output or work / f"model-{time.strftime('%Y%m%d-%H%M%S')}"
        if output.exists() and any(output.iterdir()):
            raise JobError(f"--output {output} exists and is not empty")
        argv = list(plan.argv)
        if args.register:
            argv += ["--register-as", args.register]
            if args.alias:
                argv += ["--alias", args.alias]
            tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
                f"sqlite:///{(state / 'registry.db').absolute()}"
            argv += ["--tracking-uri", tracking]
        result = run(argv, processes=args.processes or plan.processes,
                     max_restarts=plan.max_restarts if args.max_restarts is None
                     else args.max_restarts, output=output, checkpoint_dir=checkpoints,
                     run_id=plan.name, log_dir=None)
    except JobError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except DistributedError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    training = result.training
    print(f"{plan.name} done in {result.seconds:.1f}s: {training['world_size']} processes, "
          f"{training['restarts']} restart(s), final loss {training['loss'][-1]:.6f}; "
          f"model folder {result.folder}")
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="turnout")
    add_parser(parser.add_subparsers(dest="command", required=True))
    if argv[:1] != ["train"]:
        argv = ["train", *argv]
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
