"""Train a model, gate it on a held-out metric, register it, and move an alias to it.

    turnout pipeline run examples/pipelines/train_register_deploy.py \
        --param framework=xgboost --param dataset=breast_cancer --param threshold=0.9
    turnout pipeline compile examples/pipelines/train_register_deploy.py -o trd.yaml

The gate: when ``metric`` misses ``threshold``, nothing after ``evaluate-model`` runs and the
registry gets no new version. Whatever serves ``models:/MODEL_NAME@ALIAS`` (``turnout up``, the
Kubernetes controller) rolls the new version out as a canary once the alias moves; give
``service`` to have a running ``turnout up`` plane check the alias at once. See
docs/pipelines.md.
"""

from kfp import dsl

from upstream.pipelines.components import deploy_model, evaluate_model, register_model, train_model

PIPELINE_NAME = "train-register-deploy"


@dsl.pipeline(name=PIPELINE_NAME,
              description="Train, gate on a held-out metric, register in the model registry, "
                          "move an alias to the new version.")
def train_register_deploy(
    framework: str = "sklearn",
    dataset: str = "iris",
    hyperparameters: str = "{}",
    seed: int = 0,
    shuffle_labels: bool = False,
    metric: str = "accuracy",
    threshold: float = 0.8,
    higher_is_better: bool = True,
    model_name: str = "iris",
    alias: str = "champion",
    tracking_uri: str = "",
    state_dir: str = "",
    service: str = "",
):
    """``tracking_uri``: the MLflow registry (else MLFLOW_TRACKING_URI, else SQLite in
    ``state_dir``, default .turnout); ``service``: an InferenceService of a running
    ``turnout up`` plane (in ``state_dir``) to refresh after the alias moves."""
    train = train_model(framework=framework, dataset=dataset, hyperparameters=hyperparameters,
                        seed=seed, shuffle_labels=shuffle_labels, model_name=model_name)
    evaluate = evaluate_model(model=train.outputs["model"], metric=metric, threshold=threshold,
                              higher_is_better=higher_is_better)
    with dsl.If(evaluate.outputs["passed"] == True, name="metric-gate"):  # noqa: E712 - kfp
        register = register_model(model=train.outputs["model"], model_name=model_name,
                                  tracking_uri=tracking_uri, state_dir=state_dir,
                                  pipeline_name=PIPELINE_NAME,
                                  run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                  run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                  task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER)
        # Never answered from a cluster's cache: each run registers, and moves the alias.
        register.set_caching_options(False)
        deploy = deploy_model(model_name=model_name, version=register.outputs["version"],
                              alias=alias, tracking_uri=tracking_uri, state_dir=state_dir,
                              service=service)
        deploy.set_caching_options(False)
