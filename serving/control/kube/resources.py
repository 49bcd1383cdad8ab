"""The custom resources as the policies read them, and their status as the controller writes it.

Pure. ``serving.turnout.dev/v1alpha1`` InferenceService / InferenceGraph objects carry KServe's
spec unchanged, so they are read by the same models as ``turnout up``'s manifests (with
``spec.turnout`` or the ``serving.turnout.dev/spec`` annotation); the revision and rollout state
(:class:`~serving.control.policy.revisions.ServiceState`) lives in ``status.turnout``, so a
restarted controller resumes from it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from serving.control.kube.render import Owner, Settings, predictor_name, router_url
from serving.control.policy.revisions import ServiceState
from serving.control.policy.transformers import key as transformer_key
from serving.spec import InferenceGraph, InferenceService, load_texts

KSERVE = {"InferenceService": "serving.kserve.io/v1beta1",
          "InferenceGraph": "serving.kserve.io/v1alpha1"}
CONDITIONS = ("Ready", "PredictorReady", "CanaryReady", "RolloutProgressing", "RolledBack")


def where(body: dict[str, Any]) -> str:
    meta = body.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '?')}"


def manifest(body: dict[str, Any]) -> InferenceService | InferenceGraph:
    """The resource as KServe's manifest (raises ManifestError naming what is wrong)."""
    meta = body.get("metadata") or {}
    doc = {"apiVersion": KSERVE[body["kind"]], "kind": body["kind"],
           "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations")
                        if meta.get(k) is not None},
           "spec": body.get("spec") or {}}
    found = load_texts([(Path(where(body)), yaml.safe_dump(doc))])
    return (found.services or found.graphs)[0]


def owner(body: dict[str, Any]) -> Owner:
    return Owner(name=body["metadata"]["name"], uid=body["metadata"]["uid"], kind=body["kind"],
                 api_version=body["apiVersion"])


def saved_state(body: dict[str, Any]) -> ServiceState | None:
    """The revision state the controller left in the status, if any."""
    saved = (body.get("status") or {}).get("turnout")
    return ServiceState.model_validate(saved) if saved else None


def condition(kind: str, ok: bool | None, reason: str, message: str = "",
              now: float | None = None) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    return {"type": kind, "status": "Unknown" if ok is None else ("True" if ok else "False"),
            "reason": reason, "message": message, "lastTransitionTime": stamp}


def merge_conditions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New conditions, keeping an unchanged one's transition time (so nothing is rewritten)."""
    before = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prior = before.get(c["type"])
        if prior is not None and prior.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": prior.get("lastTransitionTime", c["lastTransitionTime"])}
        out.append(c)
    return out


def service_status(body: dict[str, Any], state: ServiceState, *, ready: set[str],
                   settings: Settings, omitted: list[str]) -> dict[str, Any]:
    """``status`` for a valid InferenceService: URL, traffic, conditions, the saved state."""
    name = body["metadata"]["name"]
    stable_ready = state.stable in ready
    canary = state.canary if state.canary is not None and state.phase != "rolled-back" else None
    conditions = [condition("PredictorReady", stable_ready,
                            "Ready" if stable_ready else "NoReadyReplica",
                            f"{state.stable}: " + ("ready" if stable_ready else
                                                   "no ready replica yet"))]
    if canary is not None:
        ok = canary in ready
        conditions.append(condition("CanaryReady", ok, "Ready" if ok else "NoReadyReplica",
                                    f"{canary} at {state.percent}%"))
    last = state.events[-1].message if state.events else ""
    rollout_events = [e for e in state.events if e.kind != "scaled"]
    last_rollout = rollout_events[-1].message if rollout_events else last
    conditions.append(condition("RolloutProgressing", state.phase == "progressing",
                                state.phase.replace("-", " ").title().replace(" ", ""),
                                last_rollout if state.phase == "progressing" else ""))
    rolled_back = state.phase == "rolled-back"
    conditions.append(condition("RolledBack", rolled_back, "RolledBack" if rolled_back else
                                "NotRolledBack", last_rollout if rolled_back else ""))
    scheme = "https" if settings.router_tls.enabled else "http"
    all_ready = stable_ready and (canary is None or canary in ready)
    why = "; ".join(o for o in omitted if o.startswith(f"{name}/")) or "not every revision is ready"
    conditions.insert(0, condition("Ready", all_ready, "Ready" if all_ready else "NotReady",
                                   "" if all_ready else why))
    traffic = [{"revisionName": state.stable, "tag": "prev" if canary else None,
                "percent": 100 - state.percent if canary else 100, "latestRevision": not canary}]
    if canary is not None:
        traffic.append({"revisionName": canary, "tag": "latest", "percent": state.percent,
                        "latestRevision": True})
    return {
        "url": f"{scheme}://{settings.router_name}.{settings.namespace}.svc/v2/models/{name}",
        "address": {"url": f"{router_url(settings)}/v2/models/{name}/infer"},
        "observedGeneration": body["metadata"].get("generation"),
        "canaryTrafficPercent": state.percent if canary else None,
        "rolloutStep": state.percent if state.phase == "progressing" else None,
        "phase": state.phase,
        "components": {"predictor": {
            "latestCreatedRevision": state.canary or state.stable,
            "latestReadyRevision": (canary if canary in ready else state.stable)
            if canary else state.stable,
            "previousRolledoutRevision": state.previous,
            "traffic": [{k: v for k, v in t.items() if v is not None} for t in traffic],
            "deployments": {r: predictor_name(r) for r in state.serving().values()}},
            **_transformer_component(state)},
        "conditions": conditions,
        "turnout": state.model_dump(mode="json"),
    }


def _transformer_component(state: ServiceState) -> dict[str, Any]:
    """KServe's ``components.transformer``: the serving revisions' transformer Deployments."""
    serving = [r for r in state.serving().values() if state.revisions[r].transformer is not None]
    if not serving:
        return {}
    return {"transformer": {"latestCreatedRevision": state.canary or state.stable,
                            "deployments": {r: transformer_key(r) for r in serving}}}


def invalid_status(body: dict[str, Any], message: str) -> dict[str, Any]:
    """``status`` for a resource the controller cannot act on: the reason, nothing else
    changed (a saved revision state stays)."""
    return {"observedGeneration": body["metadata"].get("generation"),
            "conditions": [condition("Ready", False, "InvalidSpec", message)]}
