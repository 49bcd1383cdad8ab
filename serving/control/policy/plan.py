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

    @property
    def at_zero(self) -> frozenset[str]:
        return frozenset(r for r, w in self.workloads.items() if w.replicas == 0)


def plan(*, services: Sequence[tuple[InferenceService, ServiceState]],
         graphs: Sequence[InferenceGraph], observed: Observed,
         hold_seconds: float = HOLD_SECONDS, health_interval: float = 1.0,
         payload_log: str | None = None) -> Desired:
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
    at_zero = frozenset(r for r, w in workloads.items() if w.replicas == 0)
    routes = router_config(services=list(services), endpoints=observed.endpoints,
                           graphs=list(graphs), at_zero=at_zero, hold_seconds=hold_seconds,
                           health_interval=health_interval, payload_log=payload_log)
    return Desired(workloads, routes.config, routes.omitted)
