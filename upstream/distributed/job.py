"""A Kubeflow Training Operator ``PyTorchJob`` (``kubeflow.org/v1``), read for a local run and
rendered for a cluster.

:func:`load_job` reads the manifest into pydantic models (unknown PyTorchJob fields are errors
naming them; the pod template is Kubernetes' and passes as it is) and applies the operator's
admission rules (a ``pytorch`` container with an image in every replica, one Master,
``nprocPerNode`` not beside the deprecated ``elasticPolicy.nProcPerNode``). :func:`local_plan`
says how the job runs on one machine:

* **processes**: (Master replicas + Worker replicas) x ``nprocPerNode``; ``nprocPerNode`` is a
  number, or ``auto``/``cpu``, which mean 1 per replica here (there are no nodes to fill);
  ``gpu`` is refused (the trainer is CPU and gloo);
* **restarts** (the elastic agent's ``max_restarts``): ``elasticPolicy.maxRestarts``, else
  ``runPolicy.backoffLimit``, else 0 when every replica says ``restartPolicy: Never``, else 3;
* **the command**: the ``pytorch`` container's ``command`` + ``args`` must run
  ``-m upstream.distributed.train`` (directly or through ``torchrun``); its arguments after the
  module are the trainer's. Master and Worker must run the same ones.

:func:`render` gives the manifest a cluster gets: the same job with the operator's defaults
written out (replicas, ``restartPolicy: OnFailure``), checked again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TRAINER_MODULE = "upstream.distributed.train"
CONTAINER = "pytorch"  # the Training Operator's default container name
DEFAULT_RESTARTS = 3


class JobError(ValueError):
    """The PyTorchJob cannot run; the message names the field."""


class _Operator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Kubernetes(BaseModel):
    """Kubernetes' own objects (pod templates, containers): every field passes."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Container(_Kubernetes):
    name: str
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None


class PodSpec(_Kubernetes):
    containers: list[Container]


class PodTemplate(_Kubernetes):
    spec: PodSpec


class ReplicaSpec(_Operator):
    replicas: int | None = Field(default=None, ge=0)
    template: PodTemplate
    restartPolicy: Literal["Always", "OnFailure", "Never", "ExitCode"] | None = None  # noqa: N815


class RdzvConf(_Operator):
    key: str | None = None
    value: str | None = None


class ElasticPolicy(_Operator):
    minReplicas: int | None = Field(default=None, ge=1)  # noqa: N815
    maxReplicas: int | None = Field(default=None, ge=1)  # noqa: N815
    rdzvBackend: Literal["c10d", "etcd", "etcd-v2"] | None = None  # noqa: N815
    rdzvPort: int | None = None  # noqa: N815
    rdzvHost: str | None = None  # noqa: N815
    rdzvId: str | None = None  # noqa: N815
    rdzvConf: list[RdzvConf] | None = None  # noqa: N815
    standalone: bool | None = None
    nProcPerNode: int | None = Field(default=None, ge=1)  # noqa: N815 - deprecated by the operator
    maxRestarts: int | None = Field(default=None, ge=0)  # noqa: N815
    metrics: list[dict[str, Any]] | None = None  # the HPA's: a cluster's business


class RunPolicy(_Operator):
    cleanPodPolicy: Literal["All", "Running", "None"] | None = None  # noqa: N815
    ttlSecondsAfterFinished: int | None = Field(default=None, ge=0)  # noqa: N815
    activeDeadlineSeconds: int | None = Field(default=None, ge=1)  # noqa: N815
    backoffLimit: int | None = Field(default=None, ge=0)  # noqa: N815
    schedulingPolicy: dict[str, Any] | None = None  # noqa: N815
    suspend: bool | None = None
    managedBy: str | None = None  # noqa: N815


class Spec(_Operator):
    pytorchReplicaSpecs: dict[str, ReplicaSpec]  # noqa: N815
    runPolicy: RunPolicy | None = None  # noqa: N815
    elasticPolicy: ElasticPolicy | None = None  # noqa: N815
    nprocPerNode: str | None = None  # noqa: N815


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=63)  # DNS-1035
    namespace: str | None = None


class PyTorchJob(_Operator):
    apiVersion: Literal["kubeflow.org/v1"]  # noqa: N815
    kind: Literal["PyTorchJob"]
    metadata: Metadata
    spec: Spec


@dataclass(frozen=True)
class LocalPlan:
    """How the job runs on this machine."""

    name: str
    processes: int
    max_restarts: int
    argv: tuple[str, ...]  # the trainer's arguments (after -m upstream.distributed.train)
    replicas: dict[str, int]
    nproc_per_node: int


def load_job(source: str | Path | Mapping[str, Any]) -> PyTorchJob:
    if isinstance(source, Mapping):
        data: Any = dict(source)
        where = "job"
    else:
        path = Path(source)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise JobError(f"cannot read {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise JobError(f"{where}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise JobError(f"{where}: a PyTorchJob is a mapping (apiVersion, kind, metadata, spec)")
    try:
        job = PyTorchJob.model_validate(data)
    except ValidationError as exc:
        raise JobError(f"{where}: " + "; ".join(_explain(e) for e in exc.errors())) from None
    _admit(job)
    return job


def _explain(error: Mapping[str, Any]) -> str:
    where = ""
    for part in error.get("loc", ()):
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    where = where or "job"
    if error.get("type") == "extra_forbidden":
        return f"{where}: not a PyTorchJob field Turnout knows"
    if error.get("type") == "missing":
        return f"{where}: required"
    return f"{where}: {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}"


def _admit(job: PyTorchJob) -> None:
    """The Training Operator's admission rules for a PyTorchJob."""
    specs = job.spec.pytorchReplicaSpecs
    if not specs:
        raise JobError("spec.pytorchReplicaSpecs: required (Master and/or Worker)")
    for role, replica in specs.items():
        where = f"spec.pytorchReplicaSpecs.{role}"
        if role not in ("Master", "Worker"):
            raise JobError(f"{where}: a PyTorchJob has Master and Worker replicas only")
        containers = replica.template.spec.containers
        if not containers:
            raise JobError(f"{where}.template.spec.containers: required")
        for i, container in enumerate(containers):
            if not container.image:
                raise JobError(f"{where}.template.spec.containers[{i}].image: required")
        if not any(c.name == CONTAINER for c in containers):
            raise JobError(f"{where}.template.spec.containers: needs a container named "
                           f"{CONTAINER!r}")
        if role == "Master" and replica.replicas != 1:
            raise JobError(f"{where}.replicas: must be 1")
    elastic = job.spec.elasticPolicy
    if elastic is not None and elastic.nProcPerNode is not None and job.spec.nprocPerNode:
        raise JobError("spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode")


def local_plan(job: PyTorchJob) -> LocalPlan:
    specs = job.spec.pytorchReplicaSpecs
    replicas = {role: (1 if spec.replicas is None else spec.replicas)
                for role, spec in specs.items()}
    nodes = sum(replicas.values())
    if nodes < 1:
        raise JobError("spec.pytorchReplicaSpecs: no replicas to run")
    nproc = _nproc(job)
    argvs = {role: _trainer_argv(role, spec) for role, spec in specs.items() if replicas[role]}
    first = next(iter(argvs.values()))
    for role, argv in argvs.items():
        if argv != first:
            raise JobError(f"spec.pytorchReplicaSpecs.{role}: its {CONTAINER} container runs "
                           "other trainer arguments than the other replicas; every rank runs "
                           "the same command")
    from upstream.distributed.train import parse_args

    try:
        args = parse_args([*first, "--output", "x", "--checkpoint-dir", "y"])
        from upstream.datasets import DATASETS, load_dataset
        from upstream.training.core import component_for

        if args.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(DATASETS)}")
        component_for("torch").resolve(load_dataset(args.dataset).task, dict(args.params))
    except ValueError as exc:
        raise JobError(f"the {CONTAINER} container: {exc}") from None
    return LocalPlan(name=job.metadata.name, processes=nodes * nproc,
                     max_restarts=_restarts(job), argv=tuple(first), replicas=replicas,
                     nproc_per_node=nproc)


def _nproc(job: PyTorchJob) -> int:
    value = job.spec.nprocPerNode
    if value is None:
        elastic = job.spec.elasticPolicy
        return elastic.nProcPerNode if elastic and elastic.nProcPerNode else 1
    if value in ("auto", "cpu"):
        return 1
    if value == "gpu":
        raise JobError("spec.nprocPerNode: gpu is not supported: the trainer runs on CPUs "
                       "(gloo)")
    try:
        count = int(value)
    except ValueError:
        raise JobError(f"spec.nprocPerNode: {value!r} is not auto, cpu, gpu or a number"
                       ) from None
    if count < 1:
        raise JobError("spec.nprocPerNode: must be at least 1")
    return count


def _restarts(job: PyTorchJob) -> int:
    if job.spec.elasticPolicy and job.spec.elasticPolicy.maxRestarts is not None:
        return job.spec.elasticPolicy.maxRestarts
    if job.spec.runPolicy and job.spec.runPolicy.backoffLimit is not None:
        return job.spec.runPolicy.backoffLimit
    policies = {spec.restartPolicy for spec in job.spec.pytorchReplicaSpecs.values()}
    return 0 if policies == {"Never"} else DEFAULT_RESTARTS


def _trainer_argv(role: str, spec: ReplicaSpec) -> list[str]:
    index = next(i for i, c in enumerate(spec.template.spec.containers) if c.name == CONTAINER)
    container = spec.template.spec.containers[index]
    where = f"spec.pytorchReplicaSpecs.{role}.template.spec.containers[{index}]"
    command = [*(container.command or []), *(container.args or [])]
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == TRAINER_MODULE:
            return command[i + 2:]
    raise JobError(f"{where}: the command must run -m {TRAINER_MODULE} (python -m ... or "
                   f"torchrun -m ...); see docs/tuning.md")


def render(job: PyTorchJob) -> dict[str, Any]:
    """The manifest for a cluster: the operator's defaults written out, checked again."""
    manifest = job.model_dump(mode="json", exclude_none=True)
    rendered = copy.deepcopy(manifest)
    for spec in rendered["spec"]["pytorchReplicaSpecs"].values():
        spec.setdefault("replicas", 1)
        spec.setdefault("restartPolicy", "OnFailure")
    load_job(rendered)  # still a valid job
    return rendered


def dump(manifest: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(manifest), sort_keys=False)
