"""Pipeline component (kfp v2) for distributed training: a configuration trained on N local
DDP processes (inside the task; on a cluster, a PyTorchJob does this across pods, see
docs/tuning.md). The body only imports and calls :mod:`upstream.distributed.steps`."""

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from upstream.pipelines.components import BASE_IMAGE

component = dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)


@component
def train_distributed(
    dataset: str,
    hyperparameters: str,
    model: Output[Model],
    metrics: Output[Metrics],
    processes: int = 2,
    seed: int = 0,
    model_name: str = "model",
    max_restarts: int = 3,
    lineage: str = "{}",
    framework: str = "torch",
):
    """Train the torch component's network with ``hyperparameters`` (JSON) on ``processes``
    DDP ranks (gloo), a checkpoint per epoch and up to ``max_restarts`` restarts, into the
    Model artifact's folder (what turnout serve loads). ``lineage`` (JSON) is carried into the
    metadata for the registration step."""
    from upstream.distributed import steps

    found = steps.train_distributed(dataset, hyperparameters, model.path, processes=processes,
                                    seed=seed, model_name=model_name, max_restarts=max_restarts,
                                    lineage=lineage, framework=framework)
    model.metadata.update(found)
    for name, value in found["metrics"].items():
        metrics.log_metric(name, value)
    print(f"trained on {found['world_size']} processes ({found['restarts']} restarts): "
          f"{found['metrics']}")
