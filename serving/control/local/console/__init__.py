"""The web console on the plane's admin listener, under ``/console`` (docs/console.md).

| method | path | needs | does |
| --- | --- | --- | --- |
| POST | /console/ticket | admin token | a one-time login ticket (``turnout console``) |
| GET | /console/login?ticket=T | the ticket | sets the session cookie, redirects to the page |
| GET | /console/, /console/static/NAME | session | the page, its script, styles, uPlot |
| GET | /console/api/state | session or token | the console's JSON document, polled |
| POST | /console/api/services/NAME/ACTION | session + CSRF, or token | promote, rollback, pause, resume |

Without a session or the token every route but login answers 401 and no page data. A
mutating call from the page also needs ``X-Turnout-CSRF`` (the session's CSRF token, given
to the page in a ``<meta>`` element) and, when the browser sends one, an ``Origin`` naming
this listener: the SameSite=Strict cookie alone is not trusted with promoting a model.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from serving.control.local import token
from serving.control.local.console.document import document
from serving.control.local.console.sessions import COOKIE, SESSION_SECONDS, Sessions

if TYPE_CHECKING:
    from serving.control.local.plane import Plane

log = logging.getLogger("turnout.control")
_ACTION = re.compile(r"^/console/api/services/([^/]+)/(promote|rollback|pause|resume)$")
STATIC = {"console.js": "text/javascript", "console.css": "text/css",
          "uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css",
          "uPlot.LICENSE": "text/plain"}
# The page runs only its own files: no inline script, no framing (the buttons cannot be
# clickjacked), nothing sent elsewhere.
HEADERS = [(b"content-security-policy", b"default-src 'none'; script-src 'self'; "
            b"style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
           (b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]
LOGIN_HELP = (b"<!doctype html><title>Turnout console</title><p>The console needs a login: "
              b"run <code>turnout console</code> where <code>turnout up</code> runs and open "
              b"the URL it prints (good once, for two minutes).</p>")


class Console:
    def __init__(self, plane: Plane, admin_token: str) -> None:
        self.plane = plane
        self.token = admin_token
        self.sessions = Sessions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        headers = dict(scope["headers"])
        bearer = token.matches(headers.get(b"authorization"), self.token)
        if method == "POST" and path == "/console/ticket":
            if not bearer:
                return await _json(send, 401, {"error": "a ticket needs the admin token"})
            ticket = self.sessions.ticket()
            return await _json(send, 200, {"ticket": ticket,
                                           "path": f"/console/login?ticket={ticket}"})
        if method == "GET" and path == "/console/login":
            return await self._login(scope, send)
        session = self.sessions.find(headers.get(b"cookie"))
        if not bearer and session is None:
            if path.startswith("/console/api/"):
                return await _json(send, 401, {"error": "the console needs a login (turnout "
                                               "console) or the admin token"})
            return await _send(send, 401, LOGIN_HELP, "text/html; charset=utf-8")
        if method == "GET" and path in ("/console", "/console/"):
            page = _static("index.html").replace(
                b"{{csrf}}", escape(session.csrf if session else "").encode())
            return await _send(send, 200, page, "text/html; charset=utf-8")
        if method == "GET" and path.startswith("/console/static/"):
            name = path.removeprefix("/console/static/")
            if name in STATIC:  # exact names only: no path ever reaches the file system
                return await _send(send, 200, _static(name), STATIC[name])
        elif method == "GET" and path == "/console/api/state":
            return await _json(send, 200, await document(self.plane))
        elif method == "POST" and (match := _ACTION.match(path)):
            if not bearer and (problem := _csrf_problem(scope, headers, session)):
                return await _json(send, 403, {"error": problem})
            return await self._act(send, match.group(1), match.group(2))
        await _json(send, 404, {"error": f"Not Found: {method} {path}"})

    async def _login(self, scope: Scope, send: Send) -> None:
        ticket = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("ticket", [""])[0]
        found = self.sessions.login(ticket) if ticket else None
        if found is None:
            return await _send(send, 401, LOGIN_HELP.replace(
                b"needs a login", b"login ticket is unknown, used or expired"),
                "text/html; charset=utf-8")
        cookie, _ = found
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        await _send(send, 303, b"", "text/plain", [
            (b"location", b"/console/"),
            (b"set-cookie", f"{COOKIE}={cookie}; Path=/console; HttpOnly; SameSite=Strict; "
                            f"Max-Age={int(SESSION_SECONDS)}{secure}".encode())])

    async def _act(self, send: Send, name: str, action: str) -> None:
        act: Callable[[str], Awaitable[str]] = getattr(self.plane, action)
        try:
            message = await act(name)
        except KeyError as exc:
            return await _json(send, 404, {"error": str(exc.args[0])})
        except Exception:  # a bug: say so without internals; the plane's log has the trace
            log.exception("console %s %s failed", action, name)
            return await _json(send, 500, {"error": f"internal error on {action}; see the "
                                           "plane's log"})
        log.info("console: %s %s: %s", action, name, message)
        await _json(send, 200, {"event": message})


def _csrf_problem(scope: Scope, headers: dict[bytes, bytes], session: Any) -> str | None:
    """Why a cookie-authenticated mutating call is refused; None when it may go ahead."""
    sent = headers.get(b"x-turnout-csrf", b"")
    if session is None or not hmac.compare_digest(sent, session.csrf.encode()):
        return "missing or wrong X-Turnout-CSRF header"
    origin = headers.get(b"origin")
    host = headers.get(b"host", b"")
    if origin is not None and origin not in (b"http://" + host, b"https://" + host):
        return "cross-origin request refused"
    return None


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


async def _json(send: Send, code: int, doc: Any) -> None:
    await _send(send, code, orjson.dumps(doc), "application/json")


async def _send(send: Send, code: int, body: bytes, content_type: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": code,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()), *HEADERS,
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
