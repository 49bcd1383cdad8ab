"""What the control loop needs from the world, as two small protocols: an observer that reads
it and an actuator that changes it.

``turnout up`` implements them with processes and the router's admin API
(:mod:`serving.control.local.actuator`); a Kubernetes controller implements them with
Deployments, Services and the router's ConfigMap. The loop between them is the same:
observe → :func:`~serving.control.policy.plan.plan` / :func:`~serving.control.policy.rollout.step`
→ act.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from serving.control.policy.observe import Totals
from serving.control.policy.plan import Desired
from serving.control.policy.routes import Endpoints

VariantKey = tuple[str, str]  # (service, role)


@dataclass(frozen=True)
class Observation:
    """One look at the world."""

    endpoints: Mapping[str, Endpoints] = field(default_factory=dict)  # revision -> ready ones
    in_flight: Mapping[VariantKey, int] = field(default_factory=dict)  # requests at replicas
    held: Mapping[VariantKey, int] = field(default_factory=dict)       # requests the router holds
    counters: Mapping[VariantKey, Totals] | None = None                # None: not read this time


class Observer(Protocol):
    async def observe(self, *, counters: bool) -> Observation:
        """Ready endpoints and demand; the router's counters too when ``counters``."""


class Actuator(Protocol):
    async def act(self, desired: Desired) -> None:
        """Make the workloads and routes what ``desired`` says (idempotent)."""
