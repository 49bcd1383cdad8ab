"""Who may use the console: one-time login tickets and browser sessions, all in memory.

The admin token never reaches the browser: ``turnout console`` (which can read the 0600 token)
asks the plane for a ticket, good once for :data:`TICKET_SECONDS`; opening the login URL trades
it for a session cookie (HttpOnly, SameSite=Strict, random) and a CSRF token the page sends back
in a header on every mutating call. A restarted plane forgets every session, as it forgets the
token it issued.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

TICKET_SECONDS = 120.0
SESSION_SECONDS = 12 * 3600.0
MAX_SESSIONS = 32        # the oldest is dropped past this: a loop of logins cannot grow memory
MAX_TICKETS = 32
COOKIE = "turnout_console"


@dataclass
class Session:
    csrf: str
    expires: float


@dataclass
class Sessions:
    tickets: dict[str, float] = field(default_factory=dict)    # ticket -> expiry
    sessions: dict[str, Session] = field(default_factory=dict)  # cookie value -> session

    def ticket(self) -> str:
        """A fresh one-time login ticket."""
        now = time.monotonic()
        self.tickets = {t: e for t, e in self.tickets.items() if e > now}
        while len(self.tickets) >= MAX_TICKETS:
            self.tickets.pop(next(iter(self.tickets)))
        value = secrets.token_urlsafe(32)
        self.tickets[value] = now + TICKET_SECONDS
        return value

    def login(self, ticket: str) -> tuple[str, Session] | None:
        """The new session's cookie value and session for a valid ticket (used up); else None."""
        expiry = next((e for t, e in self.tickets.items()
                       if hmac.compare_digest(t.encode(), ticket.encode())), None)
        if expiry is None:
            return None
        self.tickets = {t: e for t, e in self.tickets.items() if t != ticket}
        if expiry <= time.monotonic():
            return None
        self._expire()
        while len(self.sessions) >= MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(24),
                          expires=time.monotonic() + SESSION_SECONDS)
        self.sessions[cookie] = session
        return cookie, session

    def find(self, cookie_header: bytes | None) -> Session | None:
        """The live session named by a request's ``Cookie`` header, if any."""
        value = _cookie(cookie_header, COOKIE)
        if not value:
            return None
        self._expire()
        for key, session in self.sessions.items():
            if hmac.compare_digest(key.encode(), value.encode()):
                return session
        return None

    def _expire(self) -> None:
        now = time.monotonic()
        self.sessions = {k: s for k, s in self.sessions.items() if s.expires > now}


def _cookie(header: bytes | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
