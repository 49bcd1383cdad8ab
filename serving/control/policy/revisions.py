"""Revisions and traffic of one InferenceService, with KServe's canary semantics.

Pure transitions on a serialisable :class:`ServiceState` (the supervisor keeps it in
``.turnout/state.json``; a controller would keep it in the resource's status):

- the first manifest creates revision 1, which takes all traffic;
- a changed predictor (model, format, runtime, protocol, batcher) creates a new revision; with
  ``canaryTrafficPercent`` (or a ``turnout.rollout``) it becomes the canary beside the stable
  revision, without them it is promoted at once, as KServe does;
- the same predictor with ``canaryTrafficPercent`` removed promotes the canary; ``0`` rolls back;
- ``promote`` / ``rollback`` do the same from the CLI or the rollout analysis.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field

from serving.spec.inferenceservice import InferenceService

Phase = Literal["stable", "canary", "progressing", "rolled-back"]
# What an event records, so metrics and tools need not parse messages: a revision taking all
# traffic at once, a canary starting, a rollout step, a held step, the two ends of a canary,
# a canary share set by the manifest, a canary removed by the manifest, an autoscaling decision.
EventKind = Literal["created", "started", "step", "held", "promoted", "rolled_back", "share",
                    "removed", "scaled"]
MAX_EVENTS = 50


class Revision(BaseModel):
    name: str
    number: int
    digest: str
    storage_uri: str
    model_format: str
    runtime: str | None = None
    max_batch_size: int | None = None  # KServe's predictor.batcher, for this revision's servers
    max_batch_latency_ms: int | None = None


class Event(BaseModel):
    at: float
    kind: EventKind
    message: str


class ServiceState(BaseModel):
    name: str
    revisions: dict[str, Revision] = Field(default_factory=dict)
    stable: str
    canary: str | None = None
    percent: int = 0                 # the canary's share of traffic
    phase: Phase = "stable"
    step_started: float = 0.0        # when the current rollout step began
    holds: int = 0                   # consecutive analyses held for lack of data
    manifest_percent: int | None = None  # canaryTrafficPercent last applied: changes act
    events: list[Event] = Field(default_factory=list)  # the last MAX_EVENTS
    recorded: int = 0                # events ever recorded: tells a reader which ones are new

    def serving(self) -> dict[str, str]:
        """Role -> revision name for every revision that should have replicas running."""
        roles = {"stable": self.stable}
        if self.canary is not None and self.phase != "rolled-back":
            roles["canary"] = self.canary
        return roles


def digest(isvc: InferenceService) -> str:
    """Identity of the predictor's template: what a new revision is made of."""
    predictor = isvc.spec.predictor
    template = {"model": predictor.resolved().model_dump(mode="json", exclude_none=True),
                "batcher": predictor.batcher.model_dump(mode="json") if predictor.batcher else None}
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


def _revision(isvc: InferenceService, number: int) -> Revision:
    model = isvc.spec.predictor.resolved()
    batcher = isvc.spec.predictor.batcher
    return Revision(name=f"{isvc.name}-{number:05d}", number=number, digest=digest(isvc),
                    storage_uri=model.storageUri or "", model_format=model.modelFormat.name,
                    runtime=model.runtime,
                    max_batch_size=(batcher.maxBatchSize or 32) if batcher else None,
                    max_batch_latency_ms=batcher.maxLatency if batcher else None)


def record_event(state: ServiceState, now: float, kind: EventKind, message: str) -> ServiceState:
    events = [*state.events, Event(at=now, kind=kind, message=message)][-MAX_EVENTS:]
    return state.model_copy(update={"events": events, "recorded": state.recorded + 1})


def new_events(before: ServiceState | None, after: ServiceState) -> list[Event]:
    """The events ``after`` recorded since ``before`` (all of them for a new service)."""
    fresh = after.recorded - (before.recorded if before is not None else 0)
    return after.events[len(after.events) - min(max(fresh, 0), len(after.events)):]


def apply_manifest(state: ServiceState | None, isvc: InferenceService, *, now: float
                   ) -> ServiceState:
    """The state after applying ``isvc`` (KServe semantics, see the module docstring)."""
    predictor = isvc.spec.predictor
    wanted = predictor.canaryTrafficPercent
    rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
    if state is None:
        first = _revision(isvc, 1)
        return record_event(ServiceState(name=isvc.name, revisions={first.name: first},
                                         stable=first.name, manifest_percent=wanted), now,
                            "created", f"created {first.name} ({first.storage_uri}) with all traffic")
    new_digest = digest(isvc)
    latest = state.revisions[state.canary or state.stable]
    if new_digest != latest.digest:
        if new_digest == state.revisions[state.stable].digest and state.canary is not None:
            return record_event(state.model_copy(update={"canary": None, "percent": 0,
                                                         "phase": "stable",
                                                         "manifest_percent": wanted}), now,
                                "removed",
                                f"manifest is back to {state.stable}: canary {state.canary} removed")
        number = max(r.number for r in state.revisions.values()) + 1
        revision = _revision(isvc, number)
        state = state.model_copy(update={"revisions": {**state.revisions, revision.name: revision},
                                         "manifest_percent": wanted})
        if rollout is not None:
            percent = wanted if wanted is not None else rollout.steps[0]
            return start_canary(state, revision.name, percent, now=now, phase="progressing")
        if wanted is None:
            state = state.model_copy(update={"stable": revision.name, "canary": None, "percent": 0,
                                             "phase": "stable"})
            return record_event(state, now, "created", f"created {revision.name} "
                                f"({revision.storage_uri}) with all traffic (no canaryTrafficPercent)")
        return start_canary(state, revision.name, wanted, now=now, phase="canary")
    if wanted == state.manifest_percent:
        return state  # the manifest did not change: a CLI or analysis decision stands
    state = state.model_copy(update={"manifest_percent": wanted})
    if state.canary is None or rollout is not None and wanted is None:
        return state  # nothing to split, or the rollout loop owns the canary's share
    if wanted is None:
        return promote(state, now=now, reason="canaryTrafficPercent removed")
    if wanted == 0:
        return rollback(state, now=now, reason="canaryTrafficPercent set to 0")
    if wanted == 100:
        return promote(state, now=now, reason="canaryTrafficPercent set to 100")
    return record_event(state.model_copy(update={"percent": wanted, "phase": "canary"}), now,
                        "share", f"canary {state.canary} at {wanted}%")


def start_canary(state: ServiceState, revision: str, percent: int, *, now: float,
                 phase: Phase) -> ServiceState:
    state = state.model_copy(update={"canary": revision, "percent": percent, "phase": phase,
                                     "step_started": now, "holds": 0})
    if percent == 0:
        state = state.model_copy(update={"phase": "rolled-back"})
    how = "progressive rollout" if phase == "progressing" else "canary"
    return record_event(state, now, "started", f"{how}: {revision} "
                        f"({state.revisions[revision].storage_uri}) at {percent}% beside {state.stable}")


def set_step(state: ServiceState, percent: int, *, now: float, reason: str) -> ServiceState:
    state = state.model_copy(update={"percent": percent, "step_started": now, "holds": 0})
    return record_event(state, now, "step", f"canary {state.canary} advanced to {percent}%: {reason}")


def hold(state: ServiceState, *, now: float, reason: str) -> ServiceState:
    state = state.model_copy(update={"holds": state.holds + 1, "step_started": now})
    return record_event(state, now, "held", f"canary {state.canary} held at {state.percent}%: {reason}")


def promote(state: ServiceState, *, now: float, reason: str) -> ServiceState:
    if state.canary is None:
        return state
    old, new = state.stable, state.canary
    state = state.model_copy(update={"stable": new, "canary": None, "percent": 0, "phase": "stable",
                                     "holds": 0})
    return record_event(state, now, "promoted", f"promoted {new} to all traffic (was {old}): {reason}")


def rollback(state: ServiceState, *, now: float, reason: str) -> ServiceState:
    if state.canary is None or state.phase == "rolled-back":
        return state
    state = state.model_copy(update={"percent": 0, "phase": "rolled-back", "holds": 0})
    return record_event(state, now, "rolled_back",
                        f"rolled back {state.canary}, all traffic to {state.stable}: {reason}")
