"""The Katib Experiment as Turnout reads it: the example manifests have Katib's CRD shape (a JSON
schema excerpt of kubeflow.org/v1beta1 Experiment, reproduced from Katib's API types for the
fields Turnout uses), every field Turnout accepts is one of Katib's, and what Turnout does not
run is an error naming the field. Also the trial command a Katib trial container runs."""

from __future__ import annotations

import copy
import dataclasses
import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from upstream.tuning import ExperimentError, load_experiment, plan
from upstream.tuning import experiment as model
from upstream.tuning.trial import main as trial_main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "tuning").glob("*.yaml"))

_STRING = {"type": "string"}
_SETTINGS = {"type": "array", "items": {"type": "object", "properties": {
    "name": _STRING, "value": _STRING}}}
# Katib v1beta1 Experiment (pkg/apis/controller/experiments/v1beta1/experiment_types.go and
# common/v1beta1/common_types.go): the CRD's structural schema for the fields Turnout uses.
# Feasible-space bounds, steps, list items and setting values are strings there; goal is a
# number; the counts are int32; trialSpec is an unstructured object.
KATIB_EXPERIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1beta1"},
        "kind": {"const": "Experiment"},
        "metadata": {"type": "object", "properties": {"name": _STRING, "namespace": _STRING}},
        "spec": {"type": "object", "properties": {
            "parameters": {"type": "array", "items": {"type": "object", "properties": {
                "name": _STRING,
                "parameterType": {"enum": ["unknown", "double", "int", "discrete",
                                           "categorical"]},
                "feasibleSpace": {"type": "object", "properties": {
                    "max": _STRING, "min": _STRING, "step": _STRING,
                    "list": {"type": "array", "items": _STRING},
                    "distribution": {"enum": ["uniform", "logUniform", "normal", "logNormal"]},
                }},
            }}},
            "objective": {"type": "object", "properties": {
                "type": {"enum": ["minimize", "maximize"]},
                "goal": {"type": "number"},
                "objectiveMetricName": _STRING,
                "additionalMetricNames": {"type": "array", "items": _STRING},
                "metricStrategies": {"type": "array", "items": {"type": "object", "properties": {
                    "name": _STRING, "value": {"enum": ["min", "max", "latest"]}}}},
            }},
            "algorithm": {"type": "object", "properties": {
                "algorithmName": _STRING, "algorithmSettings": _SETTINGS}},
            "earlyStopping": {"type": "object", "properties": {
                "algorithmName": _STRING, "algorithmSettings": _SETTINGS}},
            "trialTemplate": {"type": "object", "properties": {
                "retain": {"type": "boolean"},
                "trialSpec": {"type": "object"},
                "configMap": {"type": "object", "properties": {
                    "configMapName": _STRING, "configMapNamespace": _STRING,
                    "templatePath": _STRING}},
                "trialParameters": {"type": "array", "items": {"type": "object", "properties": {
                    "name": _STRING, "description": _STRING, "reference": _STRING}}},
                "primaryPodLabels": {"type": "object", "additionalProperties": _STRING},
                "primaryContainerName": _STRING,
                "successCondition": _STRING,
                "failureCondition": _STRING,
            }},
            "parallelTrialCount": {"type": "integer", "format": "int32"},
            "maxTrialCount": {"type": "integer", "format": "int32"},
            "maxFailedTrialCount": {"type": "integer", "format": "int32"},
            "metricsCollectorSpec": {"type": "object", "properties": {
                "source": {"type": "object"},
                "collector": {"type": "object", "properties": {"kind": _STRING,
                                                               "customCollector": {"type": "object"}}},
            }},
            "nasConfig": {"type": "object"},
            "resumePolicy": {"enum": ["Never", "LongRunning", "FromVolume"]},
        }},
    },
}


def example() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "tuning" / "xgboost-experiment.yaml").read_text())


def test_examples_have_katibs_shape_and_plan() -> None:
    assert EXAMPLES, "examples/tuning/*.yaml"
    for path in EXAMPLES:
        manifest = yaml.safe_load(path.read_text())
        jsonschema.validate(manifest, KATIB_EXPERIMENT_SCHEMA)
        the_plan = plan(load_experiment(path))
        assert the_plan.name == manifest["metadata"]["name"]
        assert the_plan.max_trials == manifest["spec"]["maxTrialCount"]


def _fields(cls: Any) -> dict[str, Any]:
    return {name: info.annotation for name, info in cls.model_fields.items()}


def test_every_accepted_field_is_katibs() -> None:
    """Walk the pydantic models against the schema excerpt: Turnout invents no field."""
    def walk(cls: Any, schema: dict[str, Any], where: str) -> None:
        properties = schema.get("properties", {})
        for name, annotation in _fields(cls).items():
            assert name in properties, f"{where}.{name} is not a Katib field"
            nested = properties[name]
            target = nested.get("items", nested)
            for candidate in getattr(annotation, "__args__", (annotation,)):
                inner = getattr(candidate, "__args__", (candidate,))
                for kind in inner:
                    if isinstance(kind, type) and issubclass(kind, model._Katib):
                        walk(kind, target, f"{where}.{name}")

    walk(model.Experiment, KATIB_EXPERIMENT_SCHEMA, "experiment")


def _set(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    node: Any = manifest
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return manifest


_DELETE = object()
REFUSED = [
    ("spec.nasConfig", {"graphConfig": {"numLayers": 3}}, "spec.nasConfig: not supported"),
    ("spec.trialTemplate.configMap", {"configMapName": "x"},
     "spec.trialTemplate.configMap: not supported"),
    ("spec.metricsCollectorSpec", {"collector": {"kind": "File"}},
     "spec.metricsCollectorSpec.collector.kind"),
    ("spec.metricsCollectorSpec", {"source": {"filter": {"metricsFormat": ["x"]}}},
     "spec.metricsCollectorSpec.source: not supported"),
    ("spec.algorithm.algorithmName", "hyperband", "spec.algorithm.algorithmName: 'hyperband'"),
    ("spec.algorithm.algorithmSettings", [{"name": "acq_func", "value": "gp_hedge"}],
     "spec.algorithm.algorithmSettings[0]: setting 'acq_func'"),
    ("spec.earlyStopping.algorithmName", "truncation", "spec.earlyStopping.algorithmName"),
    ("spec.parameters.0.feasibleSpace.distribution", "normal",
     "spec.parameters[0].feasibleSpace.distribution: normal"),
    ("spec.parameters.0.feasibleSpace.min", 0.01,
     "spec.parameters[0].feasibleSpace.min: Katib's CRD takes a string"),
    ("spec.objective.metricStrategies.0.value", "max", "spec.objective.metricStrategies[0].value"),
    ("spec.objective.objectiveMetricName", "auc", "spec.objective.objectiveMetricName: 'auc'"),
    ("spec.trialTemplate.trialSpec.kind", "PyTorchJob", "spec.trialTemplate.trialSpec: kind"),
    ("spec.trialTemplate.primaryContainerName", "main", "spec.trialTemplate.primaryContainerName"),
    ("spec.maxTrialCount", _DELETE, "spec.maxTrialCount: required"),
    ("spec.trialTemplate.trialParameters.1.reference", "depth",
     "spec.trialTemplate.trialParameters[1].reference: 'depth'"),
    ("spec.trialTemplate.trialSpec.spec.template.spec.containers.0.args.3",
     "--param=learning_rate=0.1", "spec.trialTemplate.trialParameters[0]"),
    ("spec.trialTemplate.trialSpec.spec.template.spec.containers.0.args.2",
     "--param=n_trees=10", "unknown xgboost hyperparameter(s) n_trees"),
    ("spec.trialTemplate.trialSpec.spec.template.spec.containers.0.command",
     ["python", "train.py"], "must run python -m upstream.tuning.trial"),
    ("spec.resumeFrom", "x", "spec.resumeFrom: not supported"),
]


@pytest.mark.parametrize(("path", "value", "message"), REFUSED,
                         ids=[f"{p}={v}" for p, v, _ in REFUSED])
def test_unsupported_fields_are_errors_naming_them(path: str, value: Any, message: str) -> None:
    manifest = _set(example(), path, value)
    with pytest.raises(ExperimentError) as caught:
        plan(load_experiment(manifest))
    assert message in str(caught.value)


def test_cluster_only_fields_are_accepted() -> None:
    manifest = example()
    manifest["metadata"]["namespace"] = "kubeflow"
    manifest["spec"]["resumePolicy"] = "FromVolume"
    manifest["spec"]["metricsCollectorSpec"] = {"collector": {"kind": "StdOut"}}
    manifest["spec"]["trialTemplate"]["successCondition"] = 'status.conditions.#(type=="Complete")'
    jsonschema.validate(manifest, KATIB_EXPERIMENT_SCHEMA)
    assert plan(load_experiment(manifest)).parallel == 2


def test_search_space_and_settings() -> None:
    manifest = example()
    manifest["spec"]["algorithm"] = {"algorithmName": "grid"}
    manifest["spec"]["parameters"][0] = {"name": "learningRate", "parameterType": "discrete",
                                         "feasibleSpace": {"list": ["0.1", "0.3", "1"]}}
    del manifest["spec"]["maxTrialCount"]
    the_plan = plan(load_experiment(manifest))
    assert the_plan.max_trials == 3 * 6  # the grid's size
    assert the_plan.parameters[0].choices == (0.1, 0.3, 1.0)
    assert the_plan.trial_argv({"learningRate": 0.3, "maxDepth": 4})[-2:] == [
        "--param=learning_rate=0.3", "--param=max_depth=4"]
    manifest["spec"]["parameters"][1]["feasibleSpace"]["distribution"] = "logUniform"
    with pytest.raises(ExperimentError, match=r"parameters\[1\].feasibleSpace.distribution: grid"):
        plan(load_experiment(manifest))


def test_trial_command_prints_katib_metric_lines() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = trial_main(["--framework", "xgboost", "--dataset", "breast_cancer",
                           "--param", "n_estimators=3", "--param", "max_depth=2"])
    assert code == 0
    lines = out.getvalue().strip().splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["epoch=1", "epoch=2", "epoch=3"]
    final = dict(item.split("=") for item in lines[-1].split())
    step3 = dict(item.split("=") for item in lines[2].split()[1:])
    assert set(final) == {"accuracy", "f1_macro", "log_loss"} and final == step3


@pytest.mark.parametrize("algorithm", [
    {"algorithmName": "random"},
    {"algorithmName": "grid"},
    {"algorithmName": "tpe", "algorithmSettings": [{"name": "gamma", "value": "0.25"},
                                                   {"name": "n_EI_candidates", "value": "8"},
                                                   {"name": "prior_weight", "value": "1.1"}]},
    {"algorithmName": "multivariate-tpe",
     "algorithmSettings": [{"name": "n_startup_trials", "value": "2"}]},
    {"algorithmName": "bayesianoptimization",
     "algorithmSettings": [{"name": "n_initial_points", "value": "2"}]},
    {"algorithmName": "cmaes", "algorithmSettings": [{"name": "sigma", "value": "0.5"},
                                                     {"name": "restart_strategy",
                                                      "value": "none"}]},
], ids=lambda a: a["algorithmName"])
def test_every_algorithm_samples_the_space(algorithm: dict[str, Any]) -> None:
    """Each sampler over the example's space (plus a categorical), on a toy objective."""
    optuna = pytest.importorskip("optuna")
    from upstream.tuning.tuner import make_sampler, suggest

    manifest = example()
    manifest["spec"]["algorithm"] = {**algorithm, "algorithmSettings": [
        *algorithm.get("algorithmSettings", []), {"name": "random_state", "value": "1"}]}
    if algorithm["algorithmName"] == "grid":
        manifest["spec"]["parameters"][0] = {
            "name": "learningRate", "parameterType": "double",
            "feasibleSpace": {"min": "0.1", "max": "0.3", "step": "0.1"}}
    the_plan = plan(load_experiment(manifest))
    categorical = model.SearchParameter("booster", "categorical", choices=("gbtree", "dart"))
    the_plan = dataclasses.replace(the_plan, parameters=(*the_plan.parameters, categorical))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=make_sampler(the_plan), direction=the_plan.direction)
    seen = []

    def objective(trial: Any) -> float:
        values = {p.name: suggest(trial, p) for p in the_plan.parameters}
        seen.append(values)
        return float(values["learningRate"]) + values["maxDepth"] / 10

    with warnings.catch_warnings():  # CMA-ES samples the categorical independently
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=6)
    for values in seen:
        assert 0.01 <= values["learningRate"] <= 1.0 and 1 <= values["maxDepth"] <= 6
        assert values["booster"] in ("gbtree", "dart")
        assert isinstance(values["maxDepth"], int)

