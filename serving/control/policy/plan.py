"""The desired state: from services, their revision states and what was observed, what should
run (workloads per revision) and what the router should say (its config).

``plan()`` is what both ``turnout up`` and a Kubernetes controller call on every reconcile:
``turnout up`` turns each :class:`Workload` into ``turnout serve`` processes, a controller into
a Deployment and a Service; both hand :attr:`Desired.routes` to the router. Pure: the inputs
are serialisable values, the output too, and nothing here starts, reads or sends anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from serving.control.policy.autoscale import ScalePolicy, scale_policy
from serving.control.policy.formats import runtime_for
from serving.control.policy.revisions import ServiceState
from serving.control.policy.routes import HOLD_SECONDS, Endpoints, router_config
from serving.control.policy.transformers import TransformerWorkload
from serving.control.policy.transformers import key as transformer_key
from serving.spec.graph import InferenceGraph
from serving.spec.inferenceservice import InferenceService
from serving.spec.routes import RouterConfig

Role = Literal["stable", "canary"]


@dataclass(frozen=True)
class Workload:
    """One revision's model servers: what they serve and how many there should be."""

    service: str
    revision: str
    role: Role
    model_name: str               # the name the servers answer to (the service's)
    storage_uri: str              # the resolved URI; each server fetches it (shared cache)
    runtime: str                  # Turnout runtime name, from modelFormat / runtime
    replicas: int                 # what the autoscaler asks for now
    policy: ScalePolicy
    max_batch_size: int | None = None
    max_batch_latency_ms: int | None = None
    timeout_seconds: int | None = None
    model_version: str | None = None  # the registry version the servers report, when pinned


@dataclass(frozen=True)
class Observed:
    """What the actuator saw: ready endpoints and the autoscaler's replicas, by revision."""

    endpoints: Mapping[str, Endpoints] = field(default_factory=dict)
    replicas: Mapping[str, int] = field(default_factory=dict)  # missing: the policy's start


@dataclass(frozen=True)
class Desired:
    workloads: dict[str, Workload]   # by revision name
    routes: RouterConfig
    omitted: list[str]               # routes left out for now, and why (status, logs)
    # by revision: the transformer in front of its predictor (policy/transformers.py)
    transformers: dict[str, TransformerWorkload] = field(default_factory=dict)

    @property
    def at_zero(self) -> frozenset[str]:
        return frozenset(r for r, w in self.workloads.items() if w.replicas == 0)


def plan(*, services: Sequence[tuple[InferenceService, ServiceState]],
         graphs: Sequence[InferenceGraph], observed: Observed,
         hold_seconds: float = HOLD_SECONDS, health_interval: float = 1.0,
         payload_log: str | None = None, run_images: bool = True) -> Desired:
    """The workloads and routes for ``services`` (each with its current revision state);
    ``payload_log``: the sink of loggers without a url (policy/routes.py)."""
    workloads: dict[str, Workload] = {}
    for isvc, state in services:
        policy = scale_policy(isvc)
        for role, revision_name in state.serving().items():
            revision = state.revisions[revision_name]
            workloads[revision_name] = Workload(
                service=isvc.name, revision=revision_name, role=role,  # type: ignore[arg-type]
                model_name=isvc.name, storage_uri=revision.resolved_uri or revision.storage_uri,
                runtime=runtime_for(revision.model_format, revision.runtime),
                replicas=observed.replicas.get(revision_name, policy.start), policy=policy,
                max_batch_size=revision.max_batch_size,
                max_batch_latency_ms=revision.max_batch_latency_ms,
                timeout_seconds=isvc.spec.predictor.timeout,
                model_version=revision.model_version)
    transformers = _transformers(services, workloads, run_images)
    at_zero = frozenset(r for r, w in workloads.items() if w.replicas == 0)
    routes = router_config(services=list(services),
                           endpoints=_routed(observed.endpoints, transformers),
                           graphs=list(graphs), at_zero=at_zero, hold_seconds=hold_seconds,
                           health_interval=health_interval, payload_log=payload_log)
    return Desired(workloads, routes.config, routes.omitted, transformers)


def _transformers(services: Sequence[tuple[InferenceService, ServiceState]],
                  workloads: Mapping[str, Workload],
                  run_images: bool) -> dict[str, TransformerWorkload]:
    """A transformer per serving revision that has one, scaled with its predictor. Without
    ``run_images`` (``turnout up``) KServe's container-only transformers are left out."""
    out = {}
    for isvc, state in services:
        for revision_name in state.serving().values():
            transformer = state.revisions[revision_name].transformer
            if transformer is None or (transformer.model_class is None and not run_images):
                continue
            out[revision_name] = TransformerWorkload(
                service=isvc.name, revision=revision_name, name=transformer_key(revision_name),
                model_name=isvc.name, transformer=transformer,
                replicas=workloads[revision_name].replicas)
    return out


def _routed(endpoints: Mapping[str, Endpoints],
            transformers: Mapping[str, TransformerWorkload]) -> dict[str, Endpoints]:
    """The endpoints the router gets per revision: a revision with a transformer is reached
    through it, and only once its predictor is ready too (a transformer ready before its
    predictor would answer 503)."""
    out = dict(endpoints)
    for revision, workload in transformers.items():
        predictor_ready = bool(endpoints.get(revision))
        out[revision] = (endpoints.get(workload.name) or Endpoints()) if predictor_ready \
            else Endpoints()
    return out
