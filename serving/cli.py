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
    p.add_argument("path", nargs="?", help="model file, model folder or repository: a path, "
                   "a storage URI (file://, http(s)://, s3://, gs://) fetched into the cache "
                   "first, or a registry URI (models:/NAME/VERSION, models:/NAME@ALIAS)")
    p.add_argument("--name", dest="model_name", help="model name when PATH is one model")
    p.add_argument("--model-version", help="version a single unversioned model reports "
                   "(default 1; a models:/ URI reports its registry version)")
    p.add_argument("--model-class", help="module:Class of a custom Python model (a subclass of "
                   "runtimes.python.Model); PATH (default: the current folder) is that model's folder")
    p.add_argument("--runtime", help="runtime the model must be served by (sklearn, xgboost, "
                   "onnx...); an artifact of another framework is then an error")
    p.add_argument("--transformer-for", metavar="HOST:PORT", help="serve --model-class as a "
                   "transformer in front of this predictor (docs/transformers.md)")
    p.add_argument("--predictor-protocol", choices=["v1", "v2", "grpc-v2"],
                   help="with --transformer-for: how the predictor is called (default v2)")
    p.add_argument("--predictor-model", help="with --transformer-for: the model name at the "
                   "predictor (default --name)")
    p.add_argument("--predictor-timeout", dest="predictor_timeout_seconds", type=float,
                   help="with --transformer-for: seconds to wait for the predictor (default 60)")
    p.add_argument("--predictor-ca", type=Path, help="with --transformer-for: call the "
                   "predictor over TLS, verifying it against this CA bundle (PEM)")
    p.add_argument("--predictor-cert", type=Path, help="with --predictor-ca: the client "
                   "certificate for a predictor that requires mTLS")
    p.add_argument("--predictor-key", type=Path, help="the private key of --predictor-cert")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST port (default 8080)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8081; 0 disables)")
    p.add_argument("--grpc-engine", choices=["loop", "threaded", "aio"],
                   help="gRPC server engine (default loop: HTTP/2 on the event loop; "
                   "threaded: grpcio's thread pool; aio: grpc.aio)")
    p.add_argument("--max-payload-bytes", type=int,
                   help="largest request, REST and gRPC (default 64 MiB)")
    p.add_argument("--max-batch-size", type=int,
                   help="batch every model without its own batching settings (rows per call)")
    p.add_argument("--max-batch-latency-ms", type=float,
                   help="with --max-batch-size: how long a batch waits to fill (default 2)")
    p.add_argument("--no-auto-batching", action="store_true",
                   help="never turn batching on by measurement at load (TURNOUT_AUTO_BATCHING=0)")
    p.add_argument("--strict-readiness", action=argparse.BooleanOptionalAction,
                   help="ready only while every model is READY (default); --no-strict-readiness "
                   "keeps the server ready beside a model that failed to load")
    p.add_argument("--inference-threads", type=int, help="threads for blocking predict calls")
    p.add_argument("--workers", type=int, help="server processes sharing the ports")
    p.add_argument("--drain-seconds", type=float, help="grace period for in-flight requests")
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["text", "json"], help="log line format")
    p.add_argument("--trusted-source", dest="trusted_sources", action="append",
                   help="URI prefix whose pickle models (joblib, pkl) may be loaded "
                   "(repeatable); remote pickles are refused otherwise, since loading one runs "
                   "its code")
    p.add_argument("--trust-remote-pickle", action="store_true",
                   help="load pickle models from any remote URI (same as --trusted-source '*')")
    from serving.transport.limits import add_limit_flags

    add_limit_flags(p)
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: REST and gRPC serve TLS "
                   "(reloaded when the file changes; docs/security.md)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client "
                   "certificates it signed (mTLS)")
    from serving.transport.auth import add_auth_flags

    add_auth_flags(p)
    from serving.transport.tracing import add_trace_flags

    add_trace_flags(p)


def _serve(args: argparse.Namespace) -> int:
    from serving.server.settings import ServerSettings
    from serving.transport.logs import configure_logging

    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("command", "path", "trust_remote_pickle",
                                            "no_auto_batching")}
    if args.no_auto_batching:  # read by each worker's model repository
        import os

        os.environ["TURNOUT_AUTO_BATCHING"] = "0"
    if args.trust_remote_pickle:
        given["trusted_sources"] = [*given.get("trusted_sources", []), "*"]
    path = args.path
    if args.transformer_for and not args.model_class:
        print("turnout serve: --transformer-for needs --model-class", file=sys.stderr)
        return 2
    if args.model_class:
        path = path or "."
    if path is not None and path.startswith("models:/"):
        from serving.control.registry import RegistryProblem, locate_in_child

        try:
            located = locate_in_child(path)
        except RegistryProblem as exc:
            print(f"turnout serve: {path}: {exc}", file=sys.stderr)
            return 2
        given.setdefault("model_name", located.name)
        given.setdefault("model_version", located.version)
        print(f"turnout serve: {path} is {located.pinned_uri} ({located.location})",
              file=sys.stderr)
        path = located.location
    if path is not None:
        try:
            given["model_path"] = _local_model_path(path, given.get("trusted_sources") or [])
        except ValueError as exc:
            print(f"turnout serve: {exc}", file=sys.stderr)
            return 2
    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        print(f"turnout serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.model_path is not None and not settings.model_path.exists():
        print(f"turnout serve: {settings.model_path} does not exist", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from serving.transport import tracing

    tracing.setup("turnout-server", endpoint=settings.trace_endpoint, ratio=settings.trace_sample_ratio)
    from serving.transport.auth import AuthConfigError, check_auth_settings, exposure_error

    try:
        check_auth_settings(settings)
    except AuthConfigError as exc:
        print(f"turnout serve: {exc}", file=sys.stderr)
        return 2
    if (refused := exposure_error("turnout serve", [settings.host], settings)) is not None:
        print(refused, file=sys.stderr)
        return 2
    from serving.server.process import run

    run(settings)
    return 0


def _local_model_path(path: str, trusted: list[str]) -> Path:
    """PATH as a local path; a remote URI is fetched into the model cache first, with progress,
    and refused if it holds pickles from a source not in ``trusted``."""
    from serving.storage import check_trusted, fetch, is_remote, local_path, terminal_progress

    if not is_remote(path) and "#" not in path:
        return local_path(path)
    from serving.protocol.errors import ModelLoadError

    try:
        local = fetch(path, progress=terminal_progress())
        check_trusted(path.partition("#")[0], local, trusted)
        return local
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from None


def _api_key_parser(sub: Any) -> None:
    p = sub.add_parser("api-key", help="make API keys for --api-keys-file (docs/security.md)")
    p.add_argument("action", choices=["new", "hash"], help="new: a fresh random key and its "
                   "entry; hash: the entry of a key read from standard input")
    p.add_argument("--name", help="the key's name (logs, per-service rules); default from "
                   "its hash")
    p.add_argument("--scope", dest="scopes", action="append", choices=["inference", "management"],
                   help="what the key may do (repeatable; default inference)")
    p.add_argument("--append", type=Path, metavar="FILE", help="also append the entry to this "
                   "keys file (created with mode 0600); running servers pick it up")


def _api_key(args: argparse.Namespace) -> int:
    import os

    from serving.transport.auth import hash_key, new_key

    if args.action == "new":
        key = new_key()
    else:
        key = sys.stdin.readline().strip()
        if not key:
            print("turnout api-key hash: no key on standard input", file=sys.stderr)
            return 2
    digest = hash_key(key)
    scopes = ",".join(sorted(set(args.scopes or ["inference"])))
    entry = f"{args.name or 'key-' + digest[:8]}:{scopes}:{digest}"
    if args.action == "new":
        print(f"key: {key}")
    print(f"entry: {entry}")
    if args.append is not None:
        fd = os.open(args.append, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(entry + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="turnout", description="Turnout model serving")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _api_key_parser(sub)
    from router.cli import add_router_parser, run_router

    add_router_parser(sub)
    from serving.control.local.cli import add_parsers, dispatch

    add_parsers(sub)
    from serving.control.kube import cli as kube

    kube.add_parsers(sub)
    from upstream.pipelines import cli as pipeline_cli
    from upstream.registry import cli as registry_cli

    registry_cli.add_parser(sub)
    pipeline_cli.add_parser(sub)
    from upstream.distributed import cli as train_cli
    from upstream.tuning import cli as tune_cli

    tune_cli.add_parser(sub)
    train_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if (code := dispatch(args)) is not None:
        return code
    if (code := kube.dispatch(args)) is not None:
        return code
    if args.command == "serve":
        return _serve(args)
    if args.command == "router":
        return run_router(args)
    if args.command == "api-key":
        return _api_key(args)
    if args.command == "registry":
        return registry_cli.main(args)
    if args.command == "pipeline":
        return pipeline_cli.main(args)
    if args.command == "tune":
        return tune_cli.main(args)
    if args.command == "train":
        return train_cli.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
