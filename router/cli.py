"""``turnout router``: flags for the router process, parsed into :class:`RouterSettings`.

Flags left unset fall through to ``TURNOUT_ROUTER_*`` environment variables, then defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def add_router_parser(sub: Any) -> None:
    p = sub.add_parser("router", help="run the router in front of model servers")
    p.add_argument("--config", type=Path, help="routes YAML file (see docs/router.md)")
    p.add_argument("--host", help="bind address of the public ports (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="public REST port (default 8080)")
    p.add_argument("--grpc-port", type=int, help="public gRPC port (default 8081; 0 disables)")
    p.add_argument("--admin-port", type=int, help="admin API port on loopback (default 8090; "
                   "0 disables)")
    p.add_argument("--admin-host", help="admin API bind address (default 127.0.0.1)")
    p.add_argument("--grpc-engine", choices=["loop", "threaded"], help="gRPC edge: loop (the "
                   "default, on the event loop) or threaded (grpcio's thread pool)")
    p.add_argument("--grpc-threads", type=int, help="threaded engine: gRPC calls forwarded at "
                   "once; loop engine: 16x this many calls at once (default 64)")
    p.add_argument("--max-payload-bytes", type=int, help="largest request (default 64 MiB)")
    p.add_argument("--drain-seconds", type=float, help="grace period for in-flight requests")
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")
    from serving.transport.limits import add_limit_flags

    add_limit_flags(p)
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: the public REST and gRPC "
                   "ports serve TLS (reloaded when the file changes; docs/security.md)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client "
                   "certificates it signed (mTLS)")
    p.add_argument("--admin-tls", action=argparse.BooleanOptionalAction, default=None,
                   help="the admin API serves TLS too (default: only when TLS is on and "
                   "--admin-host is not loopback)")
    p.add_argument("--upstream-ca", type=Path, help="PEM CA bundle for https:// and grpcs:// "
                   "endpoints (default: the system's trust store)")
    p.add_argument("--upstream-cert", type=Path, help="client certificate for upstreams that "
                   "require one (mTLS)")
    p.add_argument("--upstream-key", type=Path, help="PEM private key of --upstream-cert")
    from serving.transport.auth import add_auth_flags

    add_auth_flags(p)
    from serving.transport.tracing import add_trace_flags

    add_trace_flags(p)
    p.add_argument("--admin-token-file", type=Path, help="file holding the admin API's bearer "
                   "token (created if missing; default: a fresh token in <config>.admin-token)")


def run_router(args: argparse.Namespace) -> int:
    from router.server import run
    from router.settings import RouterSettings
    from serving.spec.routes import ConfigError, load_config
    from serving.transport.logs import configure_logging

    given = {k: v for k, v in vars(args).items() if v is not None and k != "command"}
    try:
        settings = RouterSettings(**given)
    except ValidationError as exc:
        print(f"turnout router: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from serving.transport import tracing

    tracing.setup("turnout-router", endpoint=settings.trace_endpoint, ratio=settings.trace_sample_ratio)
    from router.access import config_check
    from serving.transport.auth import AuthConfigError, check_auth_settings, exposure_error

    try:
        # refuse a bad file before opening any port
        config_check(settings.auth_configured)(load_config(settings.config))
        check_auth_settings(settings)
    except (ConfigError, AuthConfigError) as exc:
        print(f"turnout router: {exc}", file=sys.stderr)
        return 2
    if (refused := exposure_error("turnout router", [settings.host], settings)) is not None:
        print(refused, file=sys.stderr)
        return 2
    _tune_gc()
    run(settings)
    return 0


def _tune_gc() -> None:
    """Collect the youngest generation less often in the router process.

    Each proxied request allocates a few dozen short-lived objects (futures, coroutines,
    header tuples), so with Python's default threshold of 700 the cyclic collector ran every
    few requests; py-spy showed its pauses as self time on allocation lines. A threshold of
    50,000 measured ~4% more MLP requests/s through the router (17.6k → 18.4k at c=32). The
    objects that exist after start-up are frozen out of every later collection.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
