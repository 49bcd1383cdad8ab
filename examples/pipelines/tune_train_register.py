"""Tune a model, train the best configuration distributed, and promote it only when it beats
the registry's champion.

    turnout pipeline run examples/pipelines/tune_train_register.py
    turnout pipeline run examples/pipelines/tune_train_register.py -p max_trials=40 -p service=cancer
    turnout pipeline compile examples/pipelines/tune_train_register.py -o ttr.yaml

``tune-model`` runs the Katib Experiment in examples/tuning/torch-experiment.yaml with Optuna (20
trials, 2 in parallel, median stopping; the study resumes on the next run, so ``max_trials``
above 20 adds trials), ``train-distributed`` trains its best configuration on 2 DDP processes,
``compare-with-champion`` evaluates the new model and ``models:/MODEL_NAME@ALIAS`` on the same
test split, and only when the new one is better does the gate let ``register-tuned-model``
(with the tuning's and the distributed run's lineage) and ``deploy-model`` (moves the alias)
run. Whatever serves ``models:/MODEL_NAME@ALIAS`` (``turnout up``, the Kubernetes controller)
then rolls the new version out as a canary. See docs/tuning.md and docs/pipelines.md.
"""

from pathlib import Path

from kfp import dsl

from upstream.distributed.components import train_distributed
from upstream.pipelines.components import deploy_model
from upstream.tuning.components import compare_with_champion, register_tuned_model, tune_model

PIPELINE_NAME = "tune-train-register"
EXPERIMENT = (Path(__file__).resolve().parents[1] / "tuning" / "torch-experiment.yaml").read_text()


@dsl.pipeline(name=PIPELINE_NAME,
              description="Tune (Katib Experiment on Optuna), train the best configuration on 2 "
                          "DDP processes, register and move the alias only when it beats the "
                          "champion.")
def tune_train_register(
    experiment: str = EXPERIMENT,
    max_trials: int = 0,
    parallel: int = 0,
    processes: int = 2,
    metric: str = "log_loss",
    higher_is_better: bool = False,
    model_name: str = "cancer-torch",
    alias: str = "champion",
    storage: str = "",
    tracking_uri: str = "",
    state_dir: str = "",
    service: str = "",
):
    """``experiment``: Katib Experiment YAML (a torch trial template); ``max_trials``/
    ``parallel``: 0 keeps the Experiment's; ``storage``: the Optuna study database (default
    SQLite in ``state_dir``); ``tracking_uri``/``state_dir``/``service`` as in
    train_register_deploy."""
    tune = tune_model(experiment=experiment, max_trials=max_trials, parallel=parallel,
                      storage=storage, tracking_uri=tracking_uri, state_dir=state_dir,
                      model_name=model_name)
    train = train_distributed(dataset=tune.outputs["dataset"],
                              hyperparameters=tune.outputs["hyperparameters"],
                              processes=processes, seed=tune.outputs["seed"],
                              model_name=model_name, lineage=tune.outputs["lineage"],
                              framework=tune.outputs["framework"])
    compare = compare_with_champion(model=train.outputs["model"], model_name=model_name,
                                    metric=metric, alias=alias,
                                    higher_is_better=higher_is_better,
                                    tracking_uri=tracking_uri, state_dir=state_dir)
    compare.set_caching_options(False)  # the champion changes between runs
    with dsl.If(compare.outputs["better"] == True, name="better-than-champion"):  # noqa: E712
        register = register_tuned_model(model=train.outputs["model"], model_name=model_name,
                                        tracking_uri=tracking_uri, state_dir=state_dir,
                                        pipeline_name=PIPELINE_NAME,
                                        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                        task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER)
        register.set_caching_options(False)
        deploy = deploy_model(model_name=model_name, version=register.outputs["version"],
                              alias=alias, tracking_uri=tracking_uri, state_dir=state_dir,
                              service=service)
        deploy.set_caching_options(False)
