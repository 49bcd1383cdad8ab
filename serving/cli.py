"""The ``turnout`` command line: parses flags into the typed settings and starts components.

Flags left unset fall through to ``TURNOUT_*`` environment variables, then to defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model file, a model folder or a folder of models")
    p.add_argument("path", type=Path, nargs="?", help="model file, model folder or repository")
    p.add_argument("--name", dest="model_name", help="model name when PATH is one model")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST port (default 8080)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8081; 0 disables)")
    p.add_argument("--grpc-engine", choices=["threaded", "aio"],
                   help="gRPC server engine (default threaded)")
    p.add_argument("--max-payload-bytes", type=int,
                   help="largest request, REST and gRPC (default 64 MiB)")
    p.add_argument("--inference-threads", type=int, help="threads for blocking predict calls")
    p.add_argument("--workers", type=int, help="server processes sharing the ports")
    p.add_argument("--drain-seconds", type=float, help="grace period for in-flight requests")
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")


def _serve(args: argparse.Namespace) -> int:
    from .logs import configure_logging
    from .settings import ServerSettings

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "path")}
    if args.path is not None:
        given["model_path"] = args.path
    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        print(f"turnout serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.model_path is not None and not settings.model_path.exists():
        print(f"turnout serve: {settings.model_path} does not exist", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from .server import run

    run(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout", description="Turnout model serving")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from router.cli import add_router_parser, run_router

    add_router_parser(sub)
    from .control.cli import add_parsers, dispatch

    add_parsers(sub)
    args = parser.parse_args(argv)
    if (code := dispatch(args)) is not None:
        return code
    if args.command == "serve":
        return _serve(args)
    if args.command == "router":
        return run_router(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
