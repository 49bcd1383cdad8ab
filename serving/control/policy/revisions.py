"""Revisions and traffic of one InferenceService, with KServe's canary semantics.

Pure transitions on a serialisable :class:`ServiceState` (``turnout up`` keeps it in
``.turnout/state.json``; a controller keeps it in the resource's status):

- the first manifest creates revision 1, which takes all traffic;
- a changed predictor (model, format, runtime, protocol, batcher) creates a new revision; with
  ``canaryTrafficPercent`` below 100 (or a ``turnout.rollout``) it becomes the canary beside the
  stable revision; without it, or at 100, it is promoted at once, as KServe does;
- the same predictor with ``canaryTrafficPercent`` removed promotes the canary; ``0`` rolls
  back — and after a promotion, ``0`` pins the previous rolled-out revision again (KServe's
  "rollback and pin the previous model"), the new one staying the latest at 0%;
- ``promote`` / ``rollback`` do the same from the CLI or the rollout analysis.

Mid-rollout edits, where KServe says nothing, follow Flagger and Argo Rollouts: they act
explicitly and leave an event, never silently. A new ``canaryTrafficPercent`` sets the share
and the analysis continues from there; removing ``spec.turnout.rollout`` stops the analysis and
leaves the canary at its share (a manual canary); adding it starts the analysis from the
current share; editing it restarts the current step's interval with the new settings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field

from serving.control.policy.observe import Totals
from serving.control.policy.transformers import TransformerRevision, transformer_revision
from serving.control.policy.transformers import template as template_of
from serving.spec.inferenceservice import InferenceService

Phase = Literal["stable", "canary", "progressing", "rolled-back"]
# What an event records, so metrics and tools need not parse messages: a revision taking all
# traffic at once, a canary starting, a rollout step, a held step, the two ends of a canary,
# a canary share set by the manifest, a canary removed by the manifest, the analysis stopped,
# resumed or re-configured by a manifest edit, an autoscaling decision.
EventKind = Literal["created", "started", "step", "held", "promoted", "rolled_back", "share",
                    "removed", "paused", "resumed", "scaled"]
MAX_EVENTS = 50


class Revision(BaseModel):
    name: str
    number: int
    digest: str
    storage_uri: str                 # as the manifest wrote it
    resolved_uri: str = ""           # what replicas are given: absolute, or a pinned version
    # A registry URI (models:/name@alias or /version) resolved to one version, pinned here so a
    # replica that restarts never loads another model: "models:/name/3"; "" otherwise.
    pinned_uri: str = ""
    model_version: str | None = None  # the registry version the replicas report over OIP
    model_format: str
    runtime: str | None = None
    max_batch_size: int | None = None  # KServe's predictor.batcher, for this revision's servers
    max_batch_latency_ms: int | None = None
    transformer: TransformerRevision | None = None  # spec.transformer, run per revision

    @property
    def source(self) -> str:
        """The model as events name it: the manifest's URI, and the registry version it pinned."""
        return f"{self.storage_uri} = {self.pinned_uri}" if self.pinned_uri else self.storage_uri


class Event(BaseModel):
    at: float
    kind: EventKind
    message: str


class ServiceState(BaseModel):
    name: str
    revisions: dict[str, Revision] = Field(default_factory=dict)
    stable: str
    canary: str | None = None
    previous: str | None = None      # the previous rolled-out revision (KServe's), for pinning
    percent: int = 0                 # the canary's share of traffic
    phase: Phase = "stable"
    step_started: float = 0.0        # when the current rollout step began (wall clock)
    holds: int = 0                   # consecutive analyses held for lack of data
    # The router's counters per role when the current step's window began; None until the
    # canary can take its share. Serialised, so a restarted plane resumes the same window.
    baseline: dict[str, Totals] | None = None
    manifest_percent: int | None = None  # canaryTrafficPercent last applied: changes act
    rollout_digest: str | None = None    # spec.turnout.rollout last applied: edits act
    events: list[Event] = Field(default_factory=list)  # the last MAX_EVENTS
    recorded: int = 0                # events ever recorded: tells a reader which ones are new

    def serving(self) -> dict[str, str]:
        """Role -> revision name for every revision that should have replicas running."""
        roles = {"stable": self.stable}
        if self.canary is not None and self.phase != "rolled-back":
            roles["canary"] = self.canary
        return roles


def digest(isvc: InferenceService, pinned_uri: str = "") -> str:
    """Identity of the predictor's template: what a new revision is made of. ``pinned_uri``:
    the registry version a ``models:/name@alias`` resolved to, so moving the alias is a change."""
    predictor = isvc.spec.predictor
    template = {"model": predictor.resolved().model_dump(mode="json", exclude_none=True),
                "batcher": predictor.batcher.model_dump(mode="json") if predictor.batcher else None}
    if pinned_uri:
        template["pinned"] = pinned_uri
    if (transformer := template_of(isvc)) is not None:  # absent: digests stay as they were
        template["transformer"] = transformer
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


def rollout_digest(isvc: InferenceService) -> str | None:
    rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
    if rollout is None:
        return None
    text = json.dumps(rollout.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _revision(isvc: InferenceService, number: int, resolved_uri: str | None = None,
              pin: Pin | None = None, transformer_uri: str | None = None) -> Revision:
    model = isvc.spec.predictor.resolved()
    batcher = isvc.spec.predictor.batcher
    pinned = pin.uri if pin else ""
    return Revision(name=f"{isvc.name}-{number:05d}", number=number, digest=digest(isvc, pinned),
                    pinned_uri=pinned, model_version=pin.version if pin else None,
                    storage_uri=model.storageUri or "", model_format=model.modelFormat.name,
                    resolved_uri=resolved_uri or model.storageUri or "",
                    runtime=model.runtime,
                    max_batch_size=(batcher.maxBatchSize or 32) if batcher else None,
                    max_batch_latency_ms=batcher.maxLatency if batcher else None,
                    transformer=transformer_revision(isvc, transformer_uri))


def record_event(state: ServiceState, now: float, kind: EventKind, message: str) -> ServiceState:
    events = [*state.events, Event(at=now, kind=kind, message=message)][-MAX_EVENTS:]
    return state.model_copy(update={"events": events, "recorded": state.recorded + 1})


def new_events(before: ServiceState | None, after: ServiceState) -> list[Event]:
    """The events ``after`` recorded since ``before`` (all of them for a new service)."""
    fresh = after.recorded - (before.recorded if before is not None else 0)
    return after.events[len(after.events) - min(max(fresh, 0), len(after.events)):]


class Pin(BaseModel):
    """A registry URI resolved to one version: ``models:/fraud@champion`` -> ``models:/fraud/3``."""

    uri: str
    version: str


def apply_manifest(state: ServiceState | None, isvc: InferenceService, *, now: float,
                   resolved_uri: str | None = None, pin: Pin | None = None,
                   transformer_uri: str | None = None) -> ServiceState:
    """The state after applying ``isvc`` (KServe semantics, see the module docstring).

    ``resolved_uri``: what the storage URI resolved to (an absolute path, a fetched registry
    version), recorded in a new revision. ``pin``: the registry version a ``models:/`` URI
    resolved to; a different version than the latest revision's is a new revision (a canary,
    with the manifest's rollout), so moving a registry alias rolls the new version out.
    ``transformer_uri``: what ``spec.transformer.turnout.storageUri`` resolved to.
    """
    predictor = isvc.spec.predictor
    wanted = predictor.canaryTrafficPercent
    rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
    if state is None:
        first = _revision(isvc, 1, resolved_uri, pin, transformer_uri)
        return record_event(ServiceState(name=isvc.name, revisions={first.name: first},
                                         stable=first.name, manifest_percent=wanted,
                                         rollout_digest=rollout_digest(isvc)), now,
                            "created", f"created {first.name} ({first.source}) with all traffic")
    new_digest = digest(isvc, pin.uri if pin else "")
    latest = state.revisions[state.canary or state.stable]
    if new_digest != latest.digest:
        return _new_revision(state, isvc, new_digest, now=now, resolved_uri=resolved_uri, pin=pin,
                             transformer_uri=transformer_uri)
    state = _rollout_edit(state, isvc, now=now)
    if wanted == state.manifest_percent:
        return state  # the manifest did not change: a CLI or analysis decision stands
    state = state.model_copy(update={"manifest_percent": wanted})
    if state.canary is None:
        if wanted == 0 and state.previous is not None and state.previous in state.revisions:
            return _pin_previous(state, now=now)
        return state  # nothing to split
    if wanted is None:
        if rollout is not None and state.phase == "progressing":
            return state  # the rollout owns the canary's share
        return promote(state, now=now, reason="canaryTrafficPercent removed")
    if wanted == 0:
        return rollback(state, now=now, reason="canaryTrafficPercent set to 0")
    if wanted == 100:
        return promote(state, now=now, reason="canaryTrafficPercent set to 100")
    phase: Phase = "progressing" if rollout is not None else "canary"
    state = state.model_copy(update={"percent": wanted, "phase": phase, "holds": 0,
                                     "step_started": now, "baseline": None})
    then = "; the analysis continues from there" if rollout is not None else ""
    return record_event(state, now, "share", f"canary {state.canary} at {wanted}% "
                        f"(canaryTrafficPercent){then}")


def _new_revision(state: ServiceState, isvc: InferenceService, new_digest: str, *, now: float,
                  resolved_uri: str | None, pin: Pin | None,
                  transformer_uri: str | None = None) -> ServiceState:
    wanted = isvc.spec.predictor.canaryTrafficPercent
    rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
    update = {"manifest_percent": wanted, "rollout_digest": rollout_digest(isvc)}
    if new_digest == state.revisions[state.stable].digest and state.canary is not None:
        return record_event(state.model_copy(update={**update, "canary": None, "percent": 0,
                                                     "phase": "stable", "baseline": None}), now,
                            "removed",
                            f"manifest is back to {state.stable}: canary {state.canary} removed")
    number = max(r.number for r in state.revisions.values()) + 1
    revision = _revision(isvc, number, resolved_uri, pin, transformer_uri)
    state = state.model_copy(update={**update, "revisions": {**state.revisions,
                                                             revision.name: revision}})
    if wanted == 100 or (wanted is None and rollout is None):
        why = "canaryTrafficPercent 100" if wanted == 100 else "no canaryTrafficPercent"
        previous = state.stable
        state = state.model_copy(update={"stable": revision.name, "canary": None, "percent": 0,
                                         "phase": "stable", "previous": previous,
                                         "baseline": None})
        return record_event(state, now, "created", f"created {revision.name} "
                            f"({revision.source}) with all traffic ({why})")
    if rollout is not None:
        percent = wanted if wanted is not None else rollout.steps[0]
        return start_canary(state, revision.name, percent, now=now, phase="progressing")
    assert wanted is not None
    return start_canary(state, revision.name, wanted, now=now, phase="canary")


def _rollout_edit(state: ServiceState, isvc: InferenceService, *, now: float) -> ServiceState:
    """``spec.turnout.rollout`` added, removed or edited for the same revision: say what the
    analysis does now (Flagger/Argo Rollouts: explicit, never silent)."""
    new = rollout_digest(isvc)
    if new == state.rollout_digest:
        return state
    state = state.model_copy(update={"rollout_digest": new})
    if state.canary is None or state.phase == "rolled-back":
        return state
    if new is None and state.phase == "progressing":
        return record_event(state.model_copy(update={"phase": "canary", "baseline": None}), now,
                            "paused", f"rollout removed from the manifest: analysis stopped, "
                            f"canary {state.canary} stays at {state.percent}% (promote or roll "
                            "back with turnout rollout, or set canaryTrafficPercent)")
    if new is not None and state.phase == "canary":
        return record_event(state.model_copy(update={"phase": "progressing", "baseline": None,
                                                     "step_started": now, "holds": 0}), now,
                            "resumed", f"rollout added: analysis of {state.canary} starts at "
                            f"{state.percent}%")
    if new is not None:
        return record_event(state.model_copy(update={"baseline": None, "step_started": now,
                                                     "holds": 0}), now,
                            "resumed", f"rollout settings changed: the step at {state.percent}% "
                            "starts over with them")
    return state


def _pin_previous(state: ServiceState, *, now: float) -> ServiceState:
    """KServe's "rollback and pin the previous model": after a promotion, 0% sends all traffic
    back to the previous rolled-out revision; the promoted one stays the latest at 0%."""
    assert state.previous is not None
    latest, previous = state.stable, state.previous
    state = state.model_copy(update={"stable": previous, "canary": latest, "percent": 0,
                                     "phase": "rolled-back", "holds": 0, "baseline": None})
    return record_event(state, now, "rolled_back", f"rolled back {latest}, all traffic to the "
                        f"previous rolled-out revision {previous}: canaryTrafficPercent set to 0")


def start_canary(state: ServiceState, revision: str, percent: int, *, now: float,
                 phase: Phase) -> ServiceState:
    state = state.model_copy(update={"canary": revision, "percent": percent, "phase": phase,
                                     "step_started": now, "holds": 0, "baseline": None})
    if percent == 0:
        state = state.model_copy(update={"phase": "rolled-back"})
    how = "progressive rollout" if phase == "progressing" else "canary"
    return record_event(state, now, "started", f"{how}: {revision} "
                        f"({state.revisions[revision].source}) at {percent}% beside {state.stable}")


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
                                     "holds": 0, "previous": old, "baseline": None})
    return record_event(state, now, "promoted", f"promoted {new} to all traffic (was {old}): {reason}")


def rollback(state: ServiceState, *, now: float, reason: str) -> ServiceState:
    if state.canary is None or state.phase == "rolled-back":
        return state
    state = state.model_copy(update={"percent": 0, "phase": "rolled-back", "holds": 0,
                                     "baseline": None})
    return record_event(state, now, "rolled_back",
                        f"rolled back {state.canary}, all traffic to {state.stable}: {reason}")


def pause(state: ServiceState, *, now: float, reason: str) -> ServiceState:
    """Stop a progressive rollout's analysis; the canary keeps its share (a manual canary),
    as removing ``spec.turnout.rollout`` does, until :func:`resume`, promote or rollback."""
    if state.canary is None or state.phase != "progressing":
        return state
    state = state.model_copy(update={"phase": "canary", "baseline": None, "holds": 0})
    return record_event(state, now, "paused", f"rollout of {state.canary} paused at "
                        f"{state.percent}%: {reason}")


def resume(state: ServiceState, *, now: float, reason: str) -> ServiceState:
    """Restart a paused rollout's analysis at its current share, with a fresh interval."""
    if state.canary is None or state.phase != "canary":
        return state
    state = state.model_copy(update={"phase": "progressing", "baseline": None, "holds": 0,
                                     "step_started": now})
    return record_event(state, now, "resumed", f"rollout of {state.canary} resumed at "
                        f"{state.percent}%: {reason}")
