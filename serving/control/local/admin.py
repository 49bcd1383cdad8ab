"""The plane's admin API on loopback, used by ``turnout apply/status/rollout/down``.

| method | path | does |
| --- | --- | --- |
| GET | /status | services, revisions, replicas, weights, rollout state, events, live metrics |
| GET | /metrics | Prometheus text: rollout events, canary share, phase, replicas (``metrics.py``) |
| POST | /apply | ``{"documents": [{"path": ..., "text": ...}]}``: manifests to apply |
| POST | /delete | ``{"services": [...], "graphs": [...]}``: remove them, draining replicas |
| POST | /services/{name}/promote, /services/{name}/rollback | end a canary |
| POST | /services/{name}/pause, /services/{name}/resume | stop / restart a rollout's analysis |
| POST | /services/{name}/refresh | resolve a ``models:/NAME@ALIAS`` now (a moved alias: canary) |
| POST | /shutdown | drain and stop everything (what ``turnout down`` calls) |
| * | /console/... | the web console, with its own login (:mod:`serving.control.local.console`) |

Where it listens is written to ``.turnout/plane.json``. Loopback only, and every call but
``GET /metrics`` needs ``Authorization: Bearer <token>`` with the token the plane wrote to
``.turnout/admin-token`` (0600) at start (:mod:`serving.control.local.token`): whoever reaches
it could replace every model being served.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from serving.control.local import token
from serving.control.local.console import Console
from serving.control.local.plane import Plane
from serving.control.local.status import status
from serving.control.policy import validate
from serving.spec.load import ManifestError, load_texts

log = logging.getLogger("turnout.control")
_ACTION = re.compile(r"^/services/([^/]+)/(promote|rollback|pause|resume|refresh)$")


class PlaneAdmin:
    def __init__(self, plane: Plane, stop: asyncio.Event, *, token: str) -> None:
        self.plane = plane
        self.stop = stop
        self.token = token
        self.console = Console(plane, token)  # /console/...: its own login (docs/console.md)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/metrics":  # for Prometheus: read-only, no token
            body = generate_latest(self.plane.metrics.registry)
            return await _send(send, 200, body, CONTENT_TYPE_LATEST)
        if path == "/console" or path.startswith("/console/"):
            return await self.console(scope, receive, send)
        authorization = dict(scope["headers"]).get(b"authorization")
        if not token.matches(authorization, self.token):
            return await _send(send, 401, orjson.dumps({"error": "the plane's admin API needs "
                                                        "the token in <state-dir>/admin-token"}),
                               "application/json", [(b"www-authenticate", b"Bearer")])
        code, doc = 404, {"error": f"Not Found: {method} {path}"}
        try:
            if method == "GET" and path == "/status":
                code, doc = 200, status(self.plane)
            elif method == "POST" and path == "/apply":
                code, doc = await self._apply(await _body(receive))
            elif method == "POST" and path == "/delete":
                code, doc = await self._delete(await _body(receive))
            elif method == "POST" and path == "/shutdown":
                self.stop.set()
                code, doc = 200, {"stopping": True}
            elif method == "POST" and (match := _ACTION.match(path)):
                act: Callable[[str], Awaitable[str]] = getattr(self.plane, match.group(2))
                code, doc = 200, {"event": await act(match.group(1))}
        except KeyError as exc:
            code, doc = 404, {"error": str(exc.args[0])}
        except ManifestError as exc:
            code, doc = 400, {"error": str(exc)}
        except Exception:  # a bug: say so without internals; the plane's log has the trace
            log.exception("admin %s %s failed", method, path)
            code, doc = 500, {"error": f"internal error in the plane on {method} {path}; see "
                              "its log"}
        await _send(send, code, orjson.dumps(doc), "application/json")

    async def _apply(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = orjson.loads(body)
            texts = [(Path(d["path"]), d["text"]) for d in request["documents"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return 400, {"error": 'body must be {"documents": [{"path": ..., "text": ...}]}'}
        manifests = load_texts(texts)
        events = await self.plane.apply(manifests)
        notes = manifests.warnings + validate.warnings(manifests.services)
        return 200, {"warnings": notes, "events": events}

    async def _delete(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = orjson.loads(body)
            services = [str(n) for n in request.get("services", [])]
            graphs = [str(n) for n in request.get("graphs", [])]
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return 400, {"error": 'body must be {"services": [...], "graphs": [...]}'}
        return 200, {"events": await self.plane.delete(services, graphs)}


async def _send(send: Send, code: int, body: bytes, content_type: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
