"""One tuning trial: a training component on a validation split, reporting its metric per epoch.

This is the command a Katib trial container runs, and what ``turnout tune``'s worker
processes run for each trial::

    python -m upstream.tuning.trial --framework xgboost --dataset breast_cancer \\
        --param n_estimators=20 --param learning_rate=${trialParameters.learningRate}

* ``--framework``, ``--dataset``, ``--seed`` (default 0): as for ``upstream.training.train``.
* ``--param NAME=VALUE`` (repeatable): a hyperparameter of the component. VALUE is read as
  JSON when it can be (``20`` is an integer, ``0.1`` a float, ``[16, 8]`` a list, ``true`` a
  boolean), else taken as text (``adam``).
* ``--validation-split`` (default 0.2): the trial trains on the training split less this share
  and is judged on the share held back, so tuning never sees the test split that the final
  model's metrics.json is measured on. ``0`` judges on the test split itself.
* ``--report-every N`` (default 1): report every Nth epoch (torch) or boosting round (XGBoost,
  LightGBM). sklearn and TensorFlow report only their final metrics.
* ``--output DIR``: keep the trial's model folder there (default: a temporary folder).

Every report is one line ``epoch=3 accuracy=0.91 f1_macro=0.90 log_loss=0.31``, and the last
line holds the final metrics: the ``name=value`` form Katib's StdOut metrics collector reads, so
median stopping works on a cluster as it does here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_VALIDATION_SPLIT = 0.2
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrialArgs:
    framework: str
    dataset: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    validation_split: float = DEFAULT_VALIDATION_SPLIT
    report_every: int = 1
    output: Path | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # a ValueError for callers, not an exit
        raise ValueError(f"the trial's arguments: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m upstream.tuning.trial", add_help=False,
                description="Train one tuning trial and print its metrics for Katib.")
    p.add_argument("--framework", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--validation-split", type=float, default=DEFAULT_VALIDATION_SPLIT)
    p.add_argument("--report-every", type=int, default=1)
    p.add_argument("--output", type=Path, default=None)
    return p


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_trial_argv(argv: Sequence[str]) -> TrialArgs:
    """The trial's arguments; ValueError naming what is wrong."""
    from upstream.training import FRAMEWORKS

    ns = parser().parse_args(list(argv))
    if ns.framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {ns.framework!r}; known: {', '.join(FRAMEWORKS)}")
    params: dict[str, Any] = {}
    for item in ns.params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {item!r} is not NAME=VALUE")
        if name in params:
            raise ValueError(f"--param {name} given twice")
        params[name] = parse_value(value)
    if not 0.0 <= ns.validation_split < 1.0:
        raise ValueError(f"--validation-split must lie in [0, 1), not {ns.validation_split}")
    if ns.report_every < 1:
        raise ValueError("--report-every must be at least 1")
    return TrialArgs(framework=ns.framework, dataset=ns.dataset, params=params, seed=ns.seed,
                     validation_split=ns.validation_split, report_every=ns.report_every,
                     output=ns.output)


def trial_dataset(name: str, seed: int, validation_split: float) -> Any:
    """``name``'s training split, less ``validation_split`` of it held back as the "test"
    split the trial is judged on (stratified for classifiers); the plain dataset when 0."""
    import dataclasses

    from sklearn.model_selection import train_test_split

    from upstream.datasets import load_dataset

    data = load_dataset(name, seed=seed)
    if validation_split <= 0:
        return data
    x_train, x_val, y_train, y_val = train_test_split(
        data.X_train, data.y_train, test_size=validation_split, random_state=seed,
        stratify=data.y_train if data.task == "classification" else None)
    return dataclasses.replace(data, name=f"{data.name}[validation]",
                               X_train=x_train.copy(), y_train=y_train, X_test=x_val.copy(),
                               y_test=y_val)


def run_trial(args: TrialArgs, out_dir: Path, on_step: StepCallback | None = None) -> Any:
    """Train the trial into ``out_dir``; ``on_step(step, metrics)`` for every reported epoch.
    Returns the TrainResult (its metrics are the validation metrics)."""
    from upstream.training import train

    data = trial_dataset(args.dataset, args.seed, args.validation_split)

    def each_epoch(step: int, metrics: dict[str, float]) -> None:
        if on_step is not None and step % args.report_every == 0:
            on_step(step, metrics)

    return train(args.framework, data, out_dir, params=args.params, seed=args.seed,
                 model_name="trial", on_epoch=each_epoch)


def metric_line(metrics: dict[str, float], step: int | None = None) -> str:
    """``epoch=3 accuracy=0.91 ...``: what Katib's StdOut collector parses."""
    head = [f"epoch={step}"] if step is not None else []
    return " ".join(head + [f"{k}={v:.10g}" for k, v in metrics.items()])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_trial_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"trial: {exc}", file=sys.stderr)
        return 2

    def report(step: int, metrics: dict[str, float]) -> None:
        print(metric_line(metrics, step), flush=True)

    with tempfile.TemporaryDirectory(prefix="trial-") as scratch:
        out = args.output or Path(scratch) / "model"
        try:
            result = run_trial(args, out, report)
        except ValueError as exc:
            print(f"trial: {exc}", file=sys.stderr)
            return 1
    print(metric_line(result.metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
