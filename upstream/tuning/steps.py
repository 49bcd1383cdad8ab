"""What the tuning and champion pipeline components do, as plain functions (no kfp): tune an
Experiment, compare a candidate with the registry's current champion, register with lineage.

The components (:mod:`upstream.tuning.components`) only import and call these.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upstream.pipelines import steps as pipeline_steps


def tune(experiment: str, out_dir: str | Path, *, max_trials: int = 0, parallel: int = 0,
         storage: str = "", tracking_uri: str = "", state_dir: str = "",
         model_name: str = "") -> dict[str, Any]:
    """Run the Experiment (YAML text, or a path to it), retrain the best configuration into
    ``out_dir``; the Model artifact's metadata (as ``upstream.pipelines.steps.train`` gives,
    plus the tuning's lineage and the best hyperparameters)."""
    pipeline_steps.quiet_mlflow()
    from upstream.tuning import load_experiment, plan
    from upstream.tuning.progress import TerminalProgress
    from upstream.tuning.tuner import tune as run_tuning

    source: Any = experiment
    if "\n" not in experiment:
        try:
            if Path(experiment).is_file():
                source = Path(experiment)
        except OSError:  # not a path at all (too long a name): YAML text
            pass
    the_plan = plan(load_experiment(source))
    result = run_tuning(
        the_plan, state_dir=Path(state_dir) if state_dir else None, storage=storage or None,
        tracking_uri=tracking_uri or None, register=False, refit_dir=Path(out_dir),
        max_trials=max_trials or None, parallel=parallel or None,
        progress=TerminalProgress(verbose=False))
    hyper = json.dumps(result.hyperparameters, sort_keys=True, default=str)
    meta = {
        "framework": the_plan.framework, "dataset": the_plan.dataset, "seed": result.seed,
        "metrics": result.metrics, "params": result.hyperparameters, "params_json": hyper,
        "model_name": model_name or the_plan.name, "shuffle_labels": False,
        "lineage_json": json.dumps(result.lineage, sort_keys=True),
        "best_trial": result.best_trial, "best_value": result.best_value,
        "study": result.study,
    }
    return json.loads(json.dumps(meta, default=str))


@dataclass(frozen=True)
class Comparison:
    better: bool
    value: float
    champion_value: float       # NaN when there is no champion
    champion_version: str       # "" when there is none
    reason: str


def compare(folder: str | Path, metadata: Mapping[str, Any], model_name: str, metric: str, *,
            alias: str = "champion", higher_is_better: bool = True, tracking_uri: str = "",
            state_dir: str = "") -> Comparison:
    """The candidate's held-out ``metric`` against the champion's (``models:/NAME@ALIAS``) on
    the same test split: the champion's files are fetched and evaluated on the candidate's
    dataset and seed (its recorded metric when that fails). No champion: better. A tie is not
    better: the alias only moves for an improvement."""
    from upstream.registry import RegistryError
    from upstream.training import evaluate

    candidate = pipeline_steps.read_metrics(folder, metadata)
    if metric not in candidate:
        raise ValueError(f"the model has no metric {metric!r}; it has "
                         f"{', '.join(sorted(candidate))}")
    value = float(candidate[metric])
    registry = pipeline_steps.registry(tracking_uri, state_dir)
    try:
        champion = registry.resolve(f"models:/{model_name}@{alias}")
    except RegistryError as exc:
        return Comparison(True, value, math.nan, "", f"no champion ({exc}): {metric} {value:.6g}")
    how = "evaluated on the same test split"
    try:
        with tempfile.TemporaryDirectory(prefix="champion-") as cache:
            theirs = evaluate(Path(registry.fetch(champion, Path(cache))),
                              str(metadata.get("dataset")), seed=int(metadata.get("seed", 0)))
        champion_value = float(theirs[metric])
    except Exception as exc:  # another dataset, an unreadable folder: its recorded metric
        recorded = champion.metrics.get(metric)
        if recorded is None:
            return Comparison(True, value, math.nan, champion.version,
                              f"champion {champion.pinned_uri} cannot be compared ({exc}); "
                              "taking the candidate")
        champion_value, how = float(recorded), "as recorded at its registration"
    if math.isnan(value):
        better = False
    else:
        better = value > champion_value if higher_is_better else value < champion_value
    verdict = "better than" if better else "not better than"
    return Comparison(better, value, champion_value, champion.version,
                      f"candidate {metric} {value:.6g} is {verdict} champion "
                      f"{champion.pinned_uri} {champion_value:.6g} ({how})")


def register(folder: str | Path, metadata: Mapping[str, Any], model_name: str, *,
             tracking_uri: str = "", state_dir: str = "", pipeline: str = "", run_name: str = "",
             run_id: str = "", task: str = "", description: str = "") -> Any:
    """``upstream.pipelines.steps.register`` with the pipeline's lineage tags and the lineage
    the model's metadata carries (``lineage_json``: the tuning study and trial, the
    distributed run)."""
    tags = pipeline_steps.lineage(pipeline=pipeline, run_name=run_name, run_id=run_id, task=task,
                                  metadata=metadata)
    extra = metadata.get("lineage_json")
    if isinstance(extra, str) and extra:
        tags.update({str(k): str(v) for k, v in json.loads(extra).items()})
    return pipeline_steps.register(folder, metadata, model_name, tracking_uri=tracking_uri,
                                   state_dir=state_dir, lineage_tags=tags,
                                   description=description)
