"""The console's one JSON document: ``turnout status``'s plus what the page draws over time.

Built from what the plane already keeps: its last minute of router scrapes (``plane.history``,
one a second) gives every variant's request rate, error rate and p50/p99 series, with no store
of its own; each service's events (up to 50) give the rollout timeline, whose verdicts carry
their numbers in their messages (policy/rollout.py); the rollout's settings give the limits
those numbers were held to. Mirror disagreements are read from the router's admin API.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from serving.control.local.status import quantile_ms, status
from serving.control.policy.observe import window

if TYPE_CHECKING:
    from serving.control.local.plane import Plane

SERIES_WINDOW = 5.0      # seconds each chart point looks back over: smooth, yet live
DISAGREEMENTS = 20       # the newest mirror disagreements shown


async def document(plane: Plane) -> dict[str, Any]:
    doc = status(plane)
    events = {name: [{"at": e.at, "kind": e.kind, "message": e.message} for e in state.events]
              for name, state in plane.states.items()}
    for svc in doc["services"]:
        svc["timeline"] = events.get(svc["name"], [])
        svc["rollout"] = _rollout(plane, svc["name"])
    return {"now": time.time(), **doc, "series": series(plane),
            "disagreements": await disagreements(plane)}


def _rollout(plane: Plane, name: str) -> dict[str, Any] | None:
    """The rollout's settings and where its current step stands; None without one."""
    isvc = plane.services.get(name, (None,))[0]
    rollout = isvc.spec.turnout.rollout if isvc is not None and isvc.spec.turnout else None
    state = plane.states.get(name)
    if rollout is None or state is None:
        return None
    return {"steps": list(rollout.steps), "interval_s": rollout.interval,
            "analysis": rollout.analysis.model_dump(mode="json", exclude_none=True),
            "step_started": state.step_started, "holds": state.holds}


def series(plane: Plane) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """service -> role -> {t, rps, error_rate, p50_ms, p99_ms}: one point per scrape, each
    over the :data:`SERIES_WINDOW` seconds before it; ``t`` in wall-clock seconds."""
    history = plane.history
    offset = time.time() - time.monotonic()
    out: dict[str, dict[str, dict[str, list[Any]]]] = {}
    start = 0
    for i, (t, now) in enumerate(history):
        while start < i and history[start][0] < t - SERIES_WINDOW:
            start += 1
        if start == i:
            continue  # a point needs an earlier scrape to measure against
        then_t, then = history[start]
        span = max(t - then_t, 1e-9)
        for key in now:
            service, role = key
            if service not in plane.states or role not in ("stable", "canary"):
                continue
            w = window(now.get(key), then.get(key))
            p50 = quantile_ms(0.5, now.get(key), then.get(key))
            points = out.setdefault(service, {}).setdefault(
                role, {"t": [], "rps": [], "error_rate": [], "p50_ms": [], "p99_ms": []})
            points["t"].append(round(t + offset, 3))
            points["rps"].append(round(w.requests / span, 3))
            points["error_rate"].append(round(w.error_rate, 4) if w.requests else None)
            points["p50_ms"].append(p50)
            points["p99_ms"].append(round(w.p99_seconds * 1000, 3)
                                    if w.p99_seconds is not None else None)
    return out


async def disagreements(plane: Plane) -> dict[str, Any]:
    """The router's newest mirror disagreements, or an empty list with a note saying why."""
    text = await plane.router.get(f"/mirror/disagreements?limit={DISAGREEMENTS}")
    if text is None:
        return {"records": [], "note": "the router's admin API did not answer "
                "GET /mirror/disagreements"}
    try:
        records = orjson.loads(text)["disagreements"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return {"records": [], "note": "the router answered GET /mirror/disagreements with "
                "something else than its records"}
    return {"records": records[:DISAGREEMENTS], "note": None}
