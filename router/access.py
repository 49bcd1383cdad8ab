"""Who may call the router: the guards of its public REST port and admin API, the admin token,
and the per-service rules of the routes (``services[].auth.principals``).

Authentication itself is ``serving/transport/auth.py``, shared with the model server. Here:

- the public port needs ``inference`` (probes and /metrics stay open), and a service whose
  routes name ``auth.principals`` admits only those API-key names or token subjects — for a
  graph, the principal must be admitted by every service the graph calls;
- the admin API always needs a credential, even on loopback (whoever reaches it can redirect
  all traffic): the admin token (``admin_token_file``), or an API key / JWT with the
  ``management`` scope when the data plane's authentication is configured; only its
  ``GET /metrics`` is open, as on the public port;
- routes that name per-service principals are refused when the router authenticates no one,
  since nothing could tell the principals apart (failing closed, at load, not per request).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from router.rest import _V1, _V2
from router.table import RoutingTable
from serving.spec.routes import ConfigError, RouterConfig
from serving.transport.auth import (
    MANAGEMENT,
    Authenticator,
    Guard,
    Principal,
    ScopeError,
    TokenFile,
    issue_token_file,
)

log = logging.getLogger("turnout.router")

ADMIN_TOKEN_SUFFIX = ".admin-token"


def model_of(path: str) -> str | None:
    """The service or graph name a public REST path addresses, as the edge reads it."""
    match = _V2.match(path) or _V1.match(path)
    return match.group(1) if match else None


def check_target(table: RoutingTable, name: str, principal: Callable[[], Principal]) -> None:
    """Raise :class:`ScopeError` unless the caller may call ``name`` (a service, or a graph
    through all of its services) on ``table``. ``principal`` is asked for only when a service
    concerned names its principals."""
    graph = table.graphs.get(name)
    names = [name] if graph is None else sorted(
        {step.service for node in graph.nodes.values() for step in node.steps
         if step.service is not None})
    for service_name in names:
        service = table.services.get(service_name)
        auth = service.spec.auth if service is not None else None
        if auth is not None:
            caller = principal()
            if caller.name not in auth.principals:
                raise ScopeError(caller, "inference",
                                 f"credential {caller.name!r} may not call {service_name!r}")


def public_guard(authenticator: Authenticator, table: Callable[[], RoutingTable]) -> Guard:
    """The guard of the public REST port (ASGI and fast path alike)."""

    def authorize(principal: Principal, method: str, path: str) -> None:
        name = model_of(path)
        if name is not None:
            check_target(table(), name, lambda: principal)

    return Guard(authenticator, authorize=authorize)


def admin_guard(token: TokenFile, data: Authenticator | None) -> Guard:
    """The admin API's guard: every call needs the admin token or a ``management`` credential."""
    sources = [token, *(data.key_sources if data is not None else ())]
    def scope_of(method: str, path: str) -> str | None:
        return None if path == "/metrics" and method == "GET" else MANAGEMENT

    return Guard(Authenticator(sources, data.jwt if data is not None else None),
                 scope_of=scope_of)


def admin_token(path: Path | None, config: Path) -> tuple[TokenFile, Path]:
    """The admin token: ``path`` (created with a fresh token if missing), else a fresh token
    at every start in ``<config>.admin-token``, or in a private temporary folder when the
    routes file's folder cannot be written."""
    if path is not None:
        if not path.exists():
            issue_token_file(path)
    else:
        path = config.with_name(config.name + ADMIN_TOKEN_SUFFIX)
        try:
            issue_token_file(path)
        except OSError:
            path = Path(tempfile.mkdtemp(prefix="turnout-router-")) / "admin-token"
            issue_token_file(path)
    log.info("admin API token in %s", path)
    return TokenFile(path, name="admin-token", scopes=frozenset({MANAGEMENT})), path


def config_check(authenticated: bool) -> Callable[[RouterConfig], RouterConfig]:
    """Refuses (:class:`ConfigError`) routes with per-service principals when the router
    authenticates no one."""

    def check(config: RouterConfig) -> RouterConfig:
        if not authenticated:
            named = [s.name for s in config.services if s.auth is not None]
            if named:
                raise ConfigError(
                    f"services {named} admit only named principals (auth.principals), but this "
                    "router authenticates no one: start it with --api-keys-file or --jwks")
        return config

    return check
