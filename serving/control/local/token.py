"""The plane's admin token: whoever can reach the admin API on loopback could otherwise replace
every model being served, so every call but ``GET /metrics`` needs it.

A new random token is written at every start to ``<state-dir>/admin-token``, readable by its
owner only (mode 0600, created so, never widened); the CLI reads it from there, so only the
user who runs the plane (and root) can drive it.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "admin-token"


def issue(state_dir: Path) -> str:
    """A fresh token in ``state_dir/admin-token`` (0600), replacing any earlier one."""
    path = state_dir / TOKEN_FILE
    path.unlink(missing_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


def read(state_dir: Path) -> str:
    return (state_dir / TOKEN_FILE).read_text().strip()


def matches(header: bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant time)."""
    if not header or not header.startswith(b"Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip(), token.encode())
