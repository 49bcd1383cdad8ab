"""``turnout status``: one JSON document built from the plane's state, and its text rendering."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from serving.control.policy.observe import Totals, quantile, window
from serving.control.policy.transformers import TransformerRevision, key

if TYPE_CHECKING:
    from serving.control.local.plane import Plane


def status(plane: Plane, live_seconds: float = 10.0) -> dict[str, Any]:
    now = time.monotonic()
    history = plane.history
    latest_t, latest = history[-1] if history else (now, {})
    then_t, then = next(((t, h) for t, h in history if t >= latest_t - live_seconds),
                        (latest_t, latest))
    span = max(latest_t - then_t, 1e-9)
    services = []
    for name, state in plane.states.items():
        roles = state.serving()
        variants = []
        for role, revision in roles.items():
            w = window(latest.get((name, role)), then.get((name, role)))
            replicas = plane.supervisor.replicas.get(revision, [])
            weight = (100 - state.percent if "canary" in roles else 100) if role == "stable" \
                else state.percent
            scaling = plane.scaling.get(revision)
            variants.append({
                "role": role, "revision": revision, "weight": weight,
                "storageUri": state.revisions[revision].storage_uri,
                "registryVersion": state.revisions[revision].pinned_uri or None,
                "replicas": {"ready": sum(r.state == "ready" for r in replicas),
                             "total": len([r for r in replicas if r.state != "stopping"]),
                             "desired": scaling.state.replicas if scaling else None,
                             "restarts": sum(r.restarts for r in replicas)},
                # where the ready replicas listen, to reach one replica's /metrics or logs
                "endpoints": {"http": [r.http for r in replicas if r.state == "ready"],
                              "grpc": [r.grpc for r in replicas if r.state == "ready"]},
                "held": plane.held.get(revision, 0),  # requests the router holds for it
                "rps": round(w.requests / span, 2) if history else 0.0,
                "error_rate": round(w.error_rate, 4),
                "p99_ms": round(w.p99_seconds * 1000, 2) if w.p99_seconds is not None else None,
                "p50_ms": quantile_ms(0.5, latest.get((name, role)), then.get((name, role))),
                "transformer": _transformer(plane, revision,
                                            state.revisions[revision].transformer)})
        isvc = plane.services.get(name, (None,))[0]
        rollout = isvc.spec.turnout.rollout if isvc is not None and isvc.spec.turnout else None
        services.append({"name": name, "phase": state.phase, "stable": state.stable,
                         "canary": state.canary, "canary_percent": state.percent,
                         "previous": state.previous,
                         # the rollout's steps (percent), to show "step 2 of 4"; None without one
                         "steps": list(rollout.steps) if rollout is not None else None,
                         "variants": variants,
                         "events": [{"at": e.at, "kind": e.kind, "message": e.message}
                                    for e in state.events[-10:]]})
    return {"http_port": plane.router.http_port, "grpc_port": plane.router.grpc_port,
            "services": services, "graphs": sorted(plane.graphs)}


def quantile_ms(q: float, now: Totals | None, then: Totals | None) -> float | None:
    """The ``q`` latency quantile (ms) of the requests between two reads of one variant's
    totals; None without any (a router restart in between counts from zero)."""
    now, then = now or Totals(), then or Totals()
    if now.reset_since(then):
        then = Totals()
    value = quantile(q, {le: c - then.buckets.get(le, 0.0) for le, c in now.buckets.items()})
    return round(value * 1000, 2) if value is not None else None


def _transformer(plane: Plane, revision: str,
                 spec: TransformerRevision | None) -> dict[str, Any] | None:
    """The revision's transformer processes (docs/transformers.md); None without one."""
    if spec is None or spec.model_class is None:
        return None
    replicas = plane.supervisor.replicas.get(key(revision), [])
    return {"name": key(revision), "modelClass": spec.model_class, "protocol": spec.protocol,
            "ready": sum(r.state == "ready" for r in replicas),
            "total": len([r for r in replicas if r.state != "stopping"]),
            "restarts": sum(r.restarts for r in replicas),
            "endpoints": {"http": [r.http for r in replicas if r.state == "ready"],
                          "grpc": [r.grpc for r in replicas if r.state == "ready"]}}


def headline(svc: dict[str, Any]) -> str:
    """``NAME  [PHASE]  stable REV, canary REV at P% (step i of n)``."""
    line = f"{svc['name']}  [{svc['phase']}]  stable {svc['stable']}"
    if svc["canary"]:
        line += f", canary {svc['canary']} at {svc['canary_percent']}%"
        steps = svc.get("steps")  # absent in documents of older planes
        if steps and svc["canary_percent"] in steps:
            line += f" (step {steps.index(svc['canary_percent']) + 1} of {len(steps)})"
    return line


def render(doc: dict[str, Any]) -> str:
    lines = [f"router: http :{doc['http_port']}  grpc :{doc['grpc_port']}"]
    for svc in doc["services"]:
        lines.append(f"\n{headline(svc)}")
        lines.append(f"  {'ROLE':7} {'REVISION':22} {'WEIGHT':>6} {'READY':>6} {'RPS':>8} "
                     f"{'ERR%':>6} {'P99ms':>8}  MODEL")
        for v in svc["variants"]:
            r = v["replicas"]
            p99 = "-" if v["p99_ms"] is None else f"{v['p99_ms']:.1f}"
            lines.append(f"  {v['role']:7} {v['revision']:22} {v['weight']:>5}% "
                         f"{r['ready']:>2}/{r['total']:<3} {v['rps']:>8.1f} "
                         f"{v['error_rate'] * 100:>6.2f} {p99:>8}  "
                         f"{v.get('registryVersion') or v['storageUri']}")
            if (t := v.get("transformer")) is not None:  # absent in older planes' documents
                lines.append(f"  {'':7} {t['name']:22} {'':>6} {t['ready']:>2}/{t['total']:<3} "
                             f"transformer {t['modelClass']} -> {t['protocol']}")
        for event in svc["events"][-5:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
            lines.append(f"  {stamp}  {event['message']}")
    if doc["graphs"]:
        lines.append(f"\ngraphs: {', '.join(doc['graphs'])}")
    return "\n".join(lines)
