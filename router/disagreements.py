"""Mirror disagreements: shadow answers that differ from the primary's, kept for people to see.

A shadow task (router/shadow.py) that finds its answer differs from the primary's builds one
:class:`Disagreement` (both answers, both variants and revisions, the request) and hands it to
:class:`DisagreementRing`: a bounded, newest-last ring read by the admin API's
``GET /mirror/disagreements`` (the control plane's console reads it there) and by the payload
logger, which sends it as an ``org.turnout.mirror.disagreement`` CloudEvent.

Everything here runs in shadow tasks, after the client has its answer. Records are bounded:
at most :data:`MAX_ELEMENTS` elements of each output and :data:`MAX_REQUEST_BYTES` of the
request, so a ring of :data:`RING_SIZE` records stays small whatever clients send.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from router.compare import Comparison, Outputs

RING_SIZE = 200          # records kept per router
MAX_ELEMENTS = 64        # output elements kept per output (the rest are counted, not kept)
MAX_REQUEST_BYTES = 16 * 1024  # request bodies up to this are kept (JSON parsed, else base64)

_IDS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class MirrorOrigin:
    """What the edge knows about the request a shadow copy came from."""

    serving: str             # the variant that answered the client
    serving_revision: str | None
    request_id: str
    protocol: str            # rest, rest-v1 or grpc
    request: bytes


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One record, already bounded: it keeps no answer arrays and no request body, so a ring
    of them stays small whatever the model outputs or clients send."""

    service: str
    shadow: str
    shadow_revision: str | None
    protocol: str
    doc: dict[str, Any]
    time: float

    @classmethod
    def of(cls, service: str, shadow: str, shadow_revision: str | None, origin: MirrorOrigin,
           c: Comparison) -> Disagreement:
        when = time.time()
        doc = {
            "id": next(_IDS), "time": _iso(when), "service": service,
            "request_id": origin.request_id, "protocol": origin.protocol,
            "primary": {"variant": origin.serving, "revision": origin.serving_revision,
                        "outputs": _outputs(c.primary)},
            "shadow": {"variant": shadow, "revision": shadow_revision,
                       "outputs": _outputs(c.shadow)},
            "comparison": {"class_total": c.class_total, "class_agreed": c.class_agreed,
                           "numeric_total": c.numeric_total,
                           "numeric_disagreed": c.numeric_disagreed,
                           "mean_abs_difference": c.abs_diff_sum / c.numeric_total
                           if c.numeric_total else None},
            "request": _request(origin.request, origin.protocol),
        }
        return cls(service, shadow, shadow_revision, origin.protocol, doc, when)

    def to_json(self) -> dict[str, Any]:
        """The record as the admin API and the CloudEvent's data show it."""
        return self.doc


class DisagreementRing:
    """The last :data:`RING_SIZE` disagreements; one writer (the event loop), any reader."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._ring: deque[Disagreement] = deque(maxlen=size)
        # called with each new record (the payload logger's event); set by the router
        self.listeners: list[Callable[[Disagreement], None]] = []

    def add(self, record: Disagreement) -> None:
        self._ring.append(record)
        for listener in self.listeners:
            listener(record)

    def recent(self, *, service: str | None = None, limit: int = RING_SIZE) -> list[Disagreement]:
        """Newest first, optionally one service's only."""
        out = []
        for record in reversed(self._ring):
            if service is None or record.service == service:
                out.append(record)
                if len(out) >= limit:
                    break
        return out


def _outputs(outputs: Outputs | None) -> dict[str, Any]:
    if outputs is None:
        return {}
    out: dict[str, Any] = {}
    for name, array in outputs.items():
        flat = np.asarray(array).reshape(-1)
        kept = flat[:MAX_ELEMENTS]
        if kept.dtype.kind in "SO":
            data: list[Any] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                               for v in kept]
        else:
            data = [None if isinstance(v, float) and not np.isfinite(v) else v
                    for v in kept.tolist()]
        out[name] = {"shape": list(array.shape), "data": data,
                     "truncated": bool(flat.size > MAX_ELEMENTS)}
    return out


def _request(body: bytes, protocol: str) -> dict[str, Any]:
    if len(body) > MAX_REQUEST_BYTES:
        return {"size": len(body), "omitted": True}
    if protocol != "grpc":
        try:
            return {"size": len(body), "json": orjson.loads(body)}
        except orjson.JSONDecodeError:
            pass  # a V2 binary body: kept as bytes
    return {"size": len(body), "base64": base64.b64encode(body).decode("ascii")}


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1e6):06d}Z"
