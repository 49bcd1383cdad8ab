"""The PyTorchJob as Turnout reads and renders it: the example and the rendered manifest have the
Training Operator's CRD shape (a JSON schema excerpt of kubeflow.org/v1 PyTorchJob for the
fields Turnout uses, from the operator's API types), the operator's admission rules hold, and the
local plan (processes, restarts, the trainer's arguments) follows the manifest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from upstream.distributed import JobError, load_job, local_plan, render
from upstream.distributed.cli import main as train_main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "distributed" / "pytorchjob.yaml"

_INT32 = {"type": "integer", "format": "int32"}
_STRING = {"type": "string"}
_REPLICA = {"type": "object", "properties": {
    "replicas": _INT32,
    "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
    "template": {"type": "object", "properties": {"spec": {
        "type": "object", "required": ["containers"], "properties": {
            "containers": {"type": "array", "items": {
                "type": "object", "required": ["name"], "properties": {
                    "name": _STRING, "image": _STRING,
                    "command": {"type": "array", "items": _STRING},
                    "args": {"type": "array", "items": _STRING}}}}}}}},
}}
# kubeflow.org/v1 PyTorchJob (training-operator pkg/apis/kubeflow.org/v1/pytorch_types.go and
# common_types.go): nprocPerNode is a string (auto, cpu, gpu or a number), replica types are
# Master and Worker, counts are int32.
PYTORCHJOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "PyTorchJob"},
        "metadata": {"type": "object", "properties": {"name": _STRING}},
        "spec": {"type": "object", "required": ["pytorchReplicaSpecs"], "properties": {
            "pytorchReplicaSpecs": {"type": "object", "properties": {
                "Master": _REPLICA, "Worker": _REPLICA}, "additionalProperties": False},
            "nprocPerNode": _STRING,
            "elasticPolicy": {"type": "object", "properties": {
                "minReplicas": _INT32, "maxReplicas": _INT32,
                "rdzvBackend": {"enum": ["c10d", "etcd", "etcd-v2"]}, "rdzvPort": _INT32,
                "rdzvHost": _STRING, "rdzvId": _STRING,
                "rdzvConf": {"type": "array", "items": {"type": "object", "properties": {
                    "key": _STRING, "value": _STRING}}},
                "standalone": {"type": "boolean"}, "nProcPerNode": _INT32,
                "maxRestarts": _INT32, "metrics": {"type": "array"}}},
            "runPolicy": {"type": "object", "properties": {
                "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                "ttlSecondsAfterFinished": _INT32, "activeDeadlineSeconds": {"type": "integer"},
                "backoffLimit": _INT32, "schedulingPolicy": {"type": "object"},
                "suspend": {"type": "boolean"}, "managedBy": _STRING}},
        }},
    },
}


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_and_render_have_the_operators_shape(tmp_path: Path) -> None:
    manifest = example()
    jsonschema.validate(manifest, PYTORCHJOB_SCHEMA)
    rendered = render(load_job(EXAMPLE))
    jsonschema.validate(rendered, PYTORCHJOB_SCHEMA)
    for spec in rendered["spec"]["pytorchReplicaSpecs"].values():
        assert spec["replicas"] == 1 and spec["restartPolicy"] == "OnFailure"
        assert spec["template"]["spec"]["containers"][0]["command"][-1] == \
            "upstream.distributed.train"
    # the Kubernetes parts pass through untouched
    assert rendered["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"] == \
        manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
    out = tmp_path / "job.yaml"
    assert train_main(["-f", str(EXAMPLE), "--render", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == rendered


def test_local_plan_follows_the_manifest() -> None:
    plan = local_plan(load_job(EXAMPLE))
    assert (plan.processes, plan.max_restarts, plan.nproc_per_node) == (2, 3, 1)
    assert plan.argv[0] == "--dataset=wine"
    manifest = example()
    manifest["spec"]["nprocPerNode"] = "2"
    manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = 2
    del manifest["spec"]["elasticPolicy"]
    manifest["spec"]["runPolicy"]["backoffLimit"] = 1
    assert (local_plan(load_job(manifest)).processes,
            local_plan(load_job(manifest)).max_restarts) == (6, 1)
    del manifest["spec"]["pytorchReplicaSpecs"]["Worker"]
    manifest["spec"]["nprocPerNode"] = "auto"
    del manifest["spec"]["runPolicy"]["backoffLimit"]
    manifest["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] = "Never"
    assert (local_plan(load_job(manifest)).processes,
            local_plan(load_job(manifest)).max_restarts) == (1, 0)


def _changed(path: str, value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(example())
    node: Any = manifest
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return manifest


MASTER = "spec.pytorchReplicaSpecs.Master"
CONTAINER = f"{MASTER}.template.spec.containers.0"
REFUSED = [
    (f"{MASTER}.replicas", 2, "spec.pytorchReplicaSpecs.Master.replicas: must be 1"),
    (f"{CONTAINER}.name", "trainer", "needs a container named 'pytorch'"),
    (f"{CONTAINER}.image", "", "containers[0].image: required"),
    (f"{CONTAINER}.command", ["python", "train.py"], "must run -m upstream.distributed.train"),
    ("spec.pytorchReplicaSpecs.Chief", {"template": {"spec": {"containers": []}}},
     "spec.pytorchReplicaSpecs.Chief: a PyTorchJob has Master and Worker replicas only"),
    ("spec.nprocPerNode", "gpu", "spec.nprocPerNode: gpu is not supported"),
    ("spec.elasticPolicy.nProcPerNode", 2, "must not be used with spec.nprocPerNode"),
    ("spec.successPolicy", "x", "spec.successPolicy: not a PyTorchJob field"),
    ("spec.runPolicy.cleanPodPolicy", "Some", "spec.runPolicy.cleanPodPolicy"),
    ("metadata.name", "Wine_DDP", "metadata.name"),
]


@pytest.mark.parametrize(("path", "value", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refusals_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(JobError) as caught:
        local_plan(load_job(_changed(path, value)))
    assert message in str(caught.value)


def test_the_trainers_arguments_are_checked() -> None:
    manifest = example()
    for spec in manifest["spec"]["pytorchReplicaSpecs"].values():
        spec["template"]["spec"]["containers"][0]["args"] = ["--dataset=wine", "--param=layers=3"]
    with pytest.raises(JobError, match=r"unknown torch hyperparameter\(s\) layers"):
        local_plan(load_job(manifest))


def test_workers_must_run_the_masters_command() -> None:
    manifest = example()
    worker = manifest["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    worker["args"] = [*worker["args"][:-1], "--param=epochs=3"]
    with pytest.raises(JobError, match="Worker: its pytorch container runs other trainer"):
        local_plan(load_job(manifest))
