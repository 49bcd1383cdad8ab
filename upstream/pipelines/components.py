"""The pipeline components (kfp v2 lightweight Python components): train, evaluate (the metric
gate), register, deploy.

kfp ships each function's *source* to the task, with ``from kfp.dsl import *`` and ``from typing
import *`` above it, so the bodies import what they use; the work itself lives in
:mod:`upstream.pipelines.steps`, which the task's environment must have (Turnout installed).

* ``base_image``: the image a KFP cluster runs the task in: :data:`BASE_IMAGE`, Turnout with the
  ``pipelines`` extra and the training frameworks (see docs/pipelines.md). It is read when this
  module is imported, so ``TURNOUT_PIPELINE_IMAGE=registry/turnout-pipelines:tag turnout
  pipeline compile ...`` compiles for another image. Local runs (``kfp.local`` with the
  subprocess runner) ignore it: tasks run with this Python.
* ``install_kfp_package=False``: the image and the local environment already have kfp; without
  it every task would ``pip install kfp`` first (and locally need the network).
"""

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

DEFAULT_IMAGE = "turnout/pipelines:0.1.0"
BASE_IMAGE = os.environ.get("TURNOUT_PIPELINE_IMAGE") or DEFAULT_IMAGE

component = dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)


@component
def train_model(
    framework: str,
    dataset: str,
    model: Output[Model],
    metrics: Output[Metrics],
    hyperparameters: str = "{}",
    seed: int = 0,
    shuffle_labels: bool = False,
    model_name: str = "model",
):
    """Train ``framework`` on ``dataset`` (hyperparameters as a JSON object) into the Model
    artifact's folder: the native artifact, model-settings.yaml (signature), metrics.json and,
    where a verified converter exists, an ONNX copy. The held-out metrics go to ``metrics``."""
    from upstream.pipelines import steps

    found = steps.train(framework, dataset, model.path, hyperparameters=hyperparameters,
                        seed=seed, shuffle_labels=shuffle_labels, model_name=model_name)
    model.metadata.update(found)
    for name, value in found["metrics"].items():
        metrics.log_metric(name, value)
    print(f"trained {framework} on {found['dataset']}: {found['metrics']}")


@component
def evaluate_model(
    model: Input[Model],
    metric: str,
    threshold: float,
    higher_is_better: bool = True,
) -> NamedTuple("Gate", [("passed", bool), ("value", float)]):
    """The metric gate: the model's held-out ``metric`` (from its metrics.json) against
    ``threshold``. ``passed`` is false below it (above it when lower is better); an unknown
    metric fails the task."""
    from collections import namedtuple

    from upstream.pipelines import steps

    result = steps.gate(steps.read_metrics(model.path, model.metadata), metric, threshold,
                        higher_is_better=higher_is_better)
    print(result.reason)
    return namedtuple("Gate", ["passed", "value"])(result.passed, result.value)


@component
def register_model(
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
    """Register the model folder as a new version of ``model_name``: its files, metrics,
    hyperparameters, signature and framework, and lineage tags naming the pipeline run (pass
    ``dsl.PIPELINE_JOB_NAME_PLACEHOLDER`` / ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``). The registry:
    ``tracking_uri``, else MLFLOW_TRACKING_URI, else SQLite in ``state_dir`` (.turnout)."""
    from collections import namedtuple

    from upstream.pipelines import steps

    tags = steps.lineage(pipeline=pipeline_name, run_name=run_name, run_id=run_id,
                         task=task_name, metadata=model.metadata)
    version = steps.register(model.path, model.metadata, model_name, tracking_uri=tracking_uri,
                             state_dir=state_dir, lineage_tags=tags, description=description)
    print(f"registered {version.pinned_uri} (lineage {tags})")
    return namedtuple("Registered", ["version", "uri"])(version.version, version.pinned_uri)


@component
def deploy_model(
    model_name: str,
    version: str,
    alias: str = "champion",
    tracking_uri: str = "",
    state_dir: str = "",
    service: str = "",
) -> NamedTuple("Deployed", [("uri", str), ("refreshed", bool), ("plane", str)]):
    """Move ``alias`` to ``version``: whatever serves ``models:/NAME@ALIAS`` rolls it out (a
    ``turnout up`` plane at its next alias poll, the Kubernetes controller at its timer). With
    ``service``, a running local plane (in ``state_dir``) is asked to check now
    (``turnout rollout refresh``); a plane that is not running is reported, not an error."""
    from collections import namedtuple

    from upstream.pipelines import steps

    done = steps.deploy(model_name, version, alias, tracking_uri=tracking_uri,
                        state_dir=state_dir, service=service)
    print(f"{done.uri} -> version {version}")
    if service:
        print(f"plane {'refreshed' if done.refreshed else 'not refreshed'}: {done.plane}")
    return namedtuple("Deployed", ["uri", "refreshed", "plane"])(done.uri, done.refreshed,
                                                                 done.plane)
