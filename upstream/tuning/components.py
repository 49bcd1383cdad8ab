"""Pipeline components (kfp v2) for tuning: tune an Experiment, compare with the registry's
champion, register with the tuning's lineage.

Like :mod:`upstream.pipelines.components`, the bodies only import and call
:mod:`upstream.tuning.steps`; the image and ``install_kfp_package=False`` are the same.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from upstream.pipelines.components import BASE_IMAGE

component = dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)


@component
def tune_model(
    experiment: str,
    model: Output[Model],
    metrics: Output[Metrics],
    max_trials: int = 0,
    parallel: int = 0,
    storage: str = "",
    tracking_uri: str = "",
    state_dir: str = "",
    model_name: str = "",
) -> NamedTuple("Tuned", [("hyperparameters", str), ("framework", str), ("dataset", str),
                          ("seed", int), ("best_trial", int), ("best_value", float),
                          ("lineage", str)]):
    """Run a Katib Experiment (YAML text) with Optuna: trials in parallel processes, the study
    in ``storage`` (default SQLite in ``state_dir``), every trial a nested MLflow run. The best
    configuration is retrained into ``model``; its hyperparameters (JSON) and lineage (JSON)
    are outputs. ``max_trials``/``parallel``: 0 keeps the Experiment's."""
    from collections import namedtuple

    from upstream.tuning import steps

    found = steps.tune(experiment, model.path, max_trials=max_trials, parallel=parallel,
                       storage=storage, tracking_uri=tracking_uri, state_dir=state_dir,
                       model_name=model_name)
    model.metadata.update(found)
    for name, value in found["metrics"].items():
        metrics.log_metric(name, value)
    print(f"best trial {found['best_trial']}: {found['params_json']}")
    return namedtuple("Tuned", ["hyperparameters", "framework", "dataset", "seed", "best_trial",
                                "best_value", "lineage"])(
        found["params_json"], found["framework"], found["dataset"], found["seed"],
        found["best_trial"], found["best_value"], found["lineage_json"])


@component
def compare_with_champion(
    model: Input[Model],
    model_name: str,
    metric: str,
    alias: str = "champion",
    higher_is_better: bool = True,
    tracking_uri: str = "",
    state_dir: str = "",
) -> NamedTuple("Comparison", [("better", bool), ("value", float), ("champion_value", float),
                               ("champion_version", str)]):
    """The candidate's held-out ``metric`` against ``models:/MODEL_NAME@ALIAS`` evaluated on
    the same test split. ``better`` when there is no champion or the candidate beats it (a tie
    does not)."""
    from collections import namedtuple

    from upstream.tuning import steps

    found = steps.compare(model.path, model.metadata, model_name, metric, alias=alias,
                          higher_is_better=higher_is_better, tracking_uri=tracking_uri,
                          state_dir=state_dir)
    print(found.reason)
    return namedtuple("Comparison", ["better", "value", "champion_value", "champion_version"])(
        found.better, found.value, found.champion_value, found.champion_version)


@component
def register_tuned_model(
    model: Input[Model],
    model_name: str,
    tracking_uri: str = "",
    state_dir: str = "",
    description: str = "",
    pipeline_name: str = "",
    run_name: str = "",
    run_id: str = "",
    task_name: str = "",
) -> NamedTuple("Registered", [("version", str), ("uri", str)]):
    """``register_model`` plus the lineage the model carries (``lineage_json``: the tuning's
    study, trial and MLflow runs; the distributed run's world size and restarts)."""
    from collections import namedtuple

    from upstream.tuning import steps

    version = steps.register(model.path, model.metadata, model_name, tracking_uri=tracking_uri,
                             state_dir=state_dir, pipeline=pipeline_name, run_name=run_name,
                             run_id=run_id, task=task_name, description=description)
    print(f"registered {version.pinned_uri} (lineage {version.lineage})")
    return namedtuple("Registered", ["version", "uri"])(version.version, version.pinned_uri)
