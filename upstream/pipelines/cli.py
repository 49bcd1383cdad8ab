"""``turnout pipeline run | compile``: Kubeflow pipelines from a Python file, run locally or
compiled for a KFP cluster.

    turnout pipeline run FILE [--param NAME=VALUE ...] [--pipeline NAME] [--root DIR] [-v]
    turnout pipeline compile FILE -o OUT.yaml [--pipeline NAME]

``run`` prints one line per task (started, succeeded/failed with its duration and parameter
outputs, skipped and why) and exits 0 when the pipeline succeeded, 1 when a task failed (one
line on stderr naming it, its error and its log). Bad input (no such file, no pipeline in it,
an unknown or mistyped parameter) is one line on stderr and exit status 2.

Importing this module imports neither kfp nor MLflow: the model server's command line adds
these subcommands at start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

PROG = "turnout pipeline"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pipeline`` (with ``run`` and ``compile``) to a ``turnout`` command line."""
    parser = subparsers.add_parser(
        "pipeline", help="run a Kubeflow pipeline (kfp v2) locally, or compile it for a cluster",
        description="Kubeflow pipelines (kfp v2) from a Python file defining a @dsl.pipeline "
                    "function: run locally (every task a subprocess of this Python) or compile "
                    "to KFP IR YAML.")
    sub = parser.add_subparsers(dest="pipeline_command", required=True, metavar="{run,compile}")

    run = sub.add_parser("run", help="run the pipeline locally, one line per task")
    run.add_argument("file", type=Path, help="Python file defining a @dsl.pipeline function")
    run.add_argument("-p", "--param", dest="params", action="append", default=[],
                     metavar="NAME=VALUE", help="pipeline parameter (repeatable); booleans "
                     "true/false, lists and dicts as JSON")
    run.add_argument("--pipeline", default=None, metavar="NAME",
                     help="which pipeline, by variable or pipeline name, when the file has several")
    run.add_argument("--root", type=Path, default=None, metavar="DIR",
                     help="where runs write their outputs and task logs (default "
                     "<state-dir>/pipeline-runs: $TURNOUT_STATE_DIR or .turnout)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="also print every task's own output as it runs")

    comp = sub.add_parser("compile", help="compile the pipeline to KFP IR YAML for a cluster")
    comp.add_argument("file", type=Path, help="Python file defining a @dsl.pipeline function")
    comp.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.yaml",
                      help="where to write the compiled pipeline")
    comp.add_argument("--pipeline", default=None, metavar="NAME",
                      help="which pipeline, by variable or pipeline name, when the file has several")
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run ``turnout pipeline ...``: parsed arguments (from :func:`add_parser`) or argv after
    ``turnout``'s own (``["pipeline", "run", FILE, ...]`` or ``["run", FILE, ...]``)."""
    if not isinstance(args, argparse.Namespace):
        args = _parse(list(sys.argv[1:] if args is None else args))
    from upstream.pipelines.runner import PipelineError

    command = args.pipeline_command
    try:
        if command == "run":
            return _run(args, sys.stdout, sys.stderr)
        if command == "compile":
            return _compile(args)
    except PipelineError as exc:
        print(f"{PROG} {command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: unknown command {command!r}", file=sys.stderr)
    return 2


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="turnout")
    add_parser(parser.add_subparsers(dest="command", required=True))
    if argv[:1] != ["pipeline"]:
        argv = ["pipeline", *argv]
    return parser.parse_args(argv)


def default_root() -> Path:
    return Path(os.environ.get("TURNOUT_STATE_DIR") or ".turnout") / "pipeline-runs"


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from upstream.pipelines import runner

    pipeline = runner.load_pipeline(args.file, args.pipeline)
    arguments = runner.parse_arguments(pipeline, args.params)
    root = (args.root or default_root()).absolute()
    print(f"pipeline {pipeline.name}: running locally, outputs under {root}", file=out,
          flush=True)
    width = max((len(n) for n in _task_names(pipeline)), default=12)

    def report(task: runner.TaskReport) -> None:
        print(format_event(task, width), file=out, flush=True)

    result = runner.run_pipeline(pipeline, arguments, root=root, on_event=report,
                                 echo=out if args.verbose else None)
    for line in result.warnings:
        print(f"warning: {line}", file=err)
    where = f" (run folder {result.run_dir})" if result.run_dir else ""
    if result.succeeded:
        print(f"pipeline {pipeline.name} succeeded in {result.seconds:.1f}s{where}", file=out,
              flush=True)
        return 0
    print(f"pipeline {pipeline.name} failed: {result.error}", file=err, flush=True)
    return 1


def format_event(task: Any, width: int = 12) -> str:
    """One progress line: ``train-model    succeeded in 3.2s``, with parameter outputs or the
    reason a task was skipped or failed."""
    name = task.name.ljust(width)
    if task.state == "running":
        return f"{name}  started"
    took = f" in {task.seconds:.1f}s" if task.seconds is not None else ""
    if task.state == "succeeded":
        shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(task.outputs.items()) if v)
        return f"{name}  succeeded{took}" + (f" ({shown})" if shown else "")
    if task.state == "failed":
        return f"{name}  failed{took}" + (f": {task.reason}" if task.reason else "")
    return f"{name}  skipped" + (f" ({task.reason})" if task.reason else "")


def _short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit - 3] + "..."


def _task_names(pipeline: Any) -> list[str]:
    """The component tasks (not the condition groups) at any depth."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values()
                              if c.WhichOneof("implementation") == "dag"]
    return [name for dag in dags for name, task in dag.tasks.items()
            if spec.components[task.component_ref.name].WhichOneof("implementation") != "dag"]


def _compile(args: argparse.Namespace) -> int:
    from upstream.pipelines import runner

    pipeline = runner.load_pipeline(args.file, args.pipeline)
    try:
        out = runner.compile_pipeline(pipeline, args.output)
    except OSError as exc:
        raise runner.PipelineError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    except Exception as exc:  # the compiler's own refusals (types, unsupported constructs)
        raise runner.PipelineError(f"cannot compile {pipeline.name!r}: {type(exc).__name__}: "
                                   f"{runner._one_line(str(exc))}") from None
    print(f"compiled pipeline {pipeline.name} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
