"""``turnout tune -f experiment.yaml``: run a Katib Experiment locally with Optuna.

    turnout tune -f EXPERIMENT.yaml [--state-dir DIR] [--storage URL] [--tracking-uri URI]
                 [--model-name NAME] [--alias ALIAS] [--no-register] [--max-trials N]
                 [--parallel N] [--keep-trials] [--dry-run] [-v]

One line per finished trial, the running trials' epochs on a status line (every epoch as a line
with ``-v``), then the best trial, the retrained model's test metrics and the registered
version. Running the same Experiment again resumes its study. Exit status: 0 done, 1 the
Experiment failed (too many failed trials, none completed) or registering failed, 2 bad input
(an unsupported field, named), 130 interrupted (run it again to resume).

Importing this module imports neither Optuna nor MLflow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "turnout tune"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to a ``turnout`` command line."""
    parser = subparsers.add_parser(
        "tune", help="tune hyperparameters: a Katib Experiment run locally with Optuna",
        description="Run a Katib Experiment (kubeflow.org/v1beta1) locally: Optuna samples the "
                    "search space, trials of the training components run in parallel processes, "
                    "the study resumes after an interruption, every trial is logged to MLflow "
                    "and the best configuration is retrained and registered (docs/tuning.md).")
    parser.add_argument("-f", "--file", dest="file", type=Path, required=True,
                        metavar="EXPERIMENT.yaml", help="the Katib Experiment manifest")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state folder: the study database (tuning.db), trial folders, the "
                        "default registry (default $TURNOUT_STATE_DIR or .turnout)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="the Optuna study database, shared by a team (postgresql://..., "
                        "mysql://...); default $TURNOUT_TUNING_STORAGE, else "
                        "sqlite:///<state-dir>/tuning.db")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking server/registry (default $MLFLOW_TRACKING_URI, "
                        "else <state-dir>/registry.db)")
    parser.add_argument("--model-name", default=None, metavar="NAME",
                        help="the registered model's name (default: the Experiment's name)")
    parser.add_argument("--alias", default=None, metavar="ALIAS",
                        help="move this alias to the registered version (turnout up then rolls "
                        "it out)")
    parser.add_argument("--no-register", action="store_true",
                        help="retrain the best configuration but register nothing")
    parser.add_argument("--max-trials", type=int, default=None, metavar="N",
                        help="override spec.maxTrialCount")
    parser.add_argument("--parallel", type=int, default=None, metavar="N",
                        help="override spec.parallelTrialCount")
    parser.add_argument("--keep-trials", action="store_true",
                        help="keep every trial's model folder under <state-dir>/tuning/NAME/trials")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the Experiment and print what would run")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every epoch")
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        args = _parse(list(sys.argv[1:] if args is None else args))
    from upstream.registry import RegistryError
    from upstream.tuning.experiment import ExperimentError, load_experiment, plan
    from upstream.tuning.progress import TerminalProgress
    from upstream.tuning.tuner import TuningFailed, tune

    try:
        the_plan = plan(load_experiment(args.file))
        for name in ("max_trials", "parallel"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ExperimentError(f"--{name.replace('_', '-')} must be at least 1")
        if args.dry_run:
            _describe(the_plan, args)
            return 0
        result = tune(the_plan, state_dir=args.state_dir, storage=args.storage,
                      tracking_uri=args.tracking_uri, register=not args.no_register,
                      model_name=args.model_name, alias=args.alias, max_trials=args.max_trials,
                      parallel=args.parallel, keep_trials=args.keep_trials,
                      progress=TerminalProgress(sys.stdout, verbose=args.verbose))
    except ExperimentError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (TuningFailed, RegistryError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume the study",
              file=sys.stderr)
        return 130
    if result.folder is not None:
        print(f"model folder: {result.folder}")
    return 0


def _describe(the_plan: Any, args: argparse.Namespace) -> None:
    print(f"experiment {the_plan.name}: {the_plan.direction} {the_plan.metric}"
          + (f" (goal {the_plan.goal:g})" if the_plan.goal is not None else ""))
    print(f"  trials: {args.max_trials or the_plan.max_trials} at most, "
          f"{args.parallel or the_plan.parallel} in parallel, "
          f"{the_plan.framework} on {the_plan.dataset}")
    settings = ", ".join(f"{k}={v}" for k, v in the_plan.algorithm_settings.items())
    print(f"  algorithm: {the_plan.algorithm}" + (f" ({settings})" if settings else ""))
    if the_plan.early_stopping:
        print(f"  early stopping: medianstop {the_plan.early_stopping}")
    for p in the_plan.parameters:
        print(f"  {p.name}: {p.describe()}")
    print("  trial: python -m upstream.tuning.trial " + " ".join(the_plan.argv))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="turnout")
    add_parser(parser.add_subparsers(dest="command", required=True))
    if argv[:1] != ["tune"]:
        argv = ["tune", *argv]
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
