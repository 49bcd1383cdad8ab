"""``turnout up | apply | status | down | rollout``: the local control plane's command line.

``up`` runs the plane in the foreground; the others talk to it through its loopback admin API,
found in ``<state-dir>/plane.json`` (``.turnout/`` by default, ``TURNOUT_STATE_DIR`` or
``--state-dir`` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from serving.control.local import token

COMMANDS = ("up", "apply", "delete", "status", "down", "rollout", "console")


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", type=Path,
                       default=Path(os.environ.get("TURNOUT_STATE_DIR", ".turnout")),
                       help="where the plane keeps state, logs and routes (default .turnout)")

    up = sub.add_parser("up", help="run InferenceService manifests locally: router + model servers")
    up.add_argument("-f", "--filename", dest="files", type=Path, action="append", required=True,
                    help="manifest file (repeatable; several documents per file)")
    up.add_argument("--host", default="127.0.0.1", help="bind address of the public ports")
    up.add_argument("--http-port", type=int, default=8080, help="public REST port (default 8080)")
    up.add_argument("--grpc-port", type=int, default=8081, help="public gRPC port (default 8081)")
    up.add_argument("--tls-cert", type=Path, help="PEM certificate chain: the public REST and "
                    "gRPC ports serve TLS (reloaded when the file changes; docs/security.md)")
    up.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    up.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: the public ports require "
                    "client certificates it signed (mTLS)")
    up.add_argument("--admin-tls", action="store_true", help="the plane's loopback admin API "
                    "serves TLS too, with --tls-cert (the CLI trusts exactly that certificate)")
    from serving.transport.auth import add_auth_flags

    add_auth_flags(up)  # the router's: its public ports (docs/security.md)
    from serving.transport.tracing import add_trace_flags

    add_trace_flags(up)  # the router's and every replica's (docs/observability.md)
    up.add_argument("--ready-timeout", type=float, default=120.0,
                    help="seconds for the first replicas to become ready before giving up")
    up.add_argument("--log-level", default="info")
    up.add_argument("--trusted-source", dest="trusted_sources", action="append", default=[],
                    help="storageUri prefix whose pickle models (sklearn's joblib/pkl) may be "
                    "served (repeatable); remote pickles are refused otherwise")
    up.add_argument("--trust-remote-pickle", action="store_true",
                    help="serve pickle models from any remote storageUri")
    up.add_argument("--model-root", dest="model_roots", action="append", default=[],
                    help="folder local storageUris must be inside (repeatable; symlinks "
                    "resolved); default: the current folder and the folders of the -f files")
    up.add_argument("--any-model-path", action="store_true",
                    help="serve local models from any path this user can read (no model root)")
    up.add_argument("--registry-uri", default=None,
                    help="MLflow tracking URI for models:/ storage URIs (default: "
                    "MLFLOW_TRACKING_URI, else sqlite:///<state-dir>/registry.db)")
    up.add_argument("--registry-poll", type=float, default=30.0,
                    help="seconds between checks of models:/NAME@ALIAS aliases; a moved alias "
                    "starts a canary of the new version (0: only on turnout rollout refresh)")
    common(up)
    apply = sub.add_parser("apply", help="apply manifests to the running plane")
    apply.add_argument("-f", "--filename", dest="files", type=Path, action="append", required=True)
    apply.add_argument("--wait", action="store_true", help="wait until the services' replicas "
                       "are ready and their rollouts have ended, showing progress (exit 1 on a "
                       "rollback or after --timeout)")
    apply.add_argument("--timeout", type=float, default=600.0,
                       help="seconds --wait waits (default 600)")
    common(apply)
    delete = sub.add_parser("delete", help="remove InferenceServices and InferenceGraphs "
                            "(their replicas drain and stop)")
    delete.add_argument("names", nargs="*", help="InferenceService or InferenceGraph names")
    delete.add_argument("-f", "--filename", dest="files", type=Path, action="append", default=[],
                        help="delete what these manifests define")
    common(delete)
    status = sub.add_parser("status", help="services, revisions, replicas, weights, metrics")
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    status.add_argument("-w", "--watch", action="store_true", help="redraw every --interval "
                        "seconds until Ctrl-C (a live view on a terminal, repeated text otherwise; "
                        "with -o json, one document per line)")
    status.add_argument("--interval", type=_positive, default=2.0,
                        help="seconds between redraws with --watch (default 2)")
    common(status)
    down = sub.add_parser("down", help="drain and stop the running plane")
    common(down)
    rollout = sub.add_parser("rollout", help="promote or roll back a canary, pause or resume its "
                             "analysis, or refresh a registry alias now")
    rollout.add_argument("action", choices=["promote", "rollback", "pause", "resume", "refresh"])
    rollout.add_argument("name", help="InferenceService name")
    common(rollout)
    console = sub.add_parser("console", help="print a one-time login URL of the plane's web "
                             "console (docs/console.md)")
    console.add_argument("--open", action="store_true", help="open it in the web browser too")
    common(console)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the command if it is one of ours; None means it is someone else's."""
    if args.command not in COMMANDS:
        return None
    if args.command == "up":
        from serving.control.local.run import up

        return up(args)
    try:
        if args.command == "apply":
            return _apply(args)
        elif args.command == "delete":
            for line in _call(args.state_dir, "POST", "/delete", _to_delete(args))["events"]:
                print(line)
        elif args.command == "status" and args.watch:
            from serving.control.local.live import watch

            return watch(lambda: _call(args.state_dir, "GET", "/status"), interval=args.interval,
                         as_json=args.output == "json")
        elif args.command == "status":
            answer = _call(args.state_dir, "GET", "/status")
            from serving.control.local.status import render

            print(json.dumps(answer, indent=1) if args.output == "json" else render(answer))
        elif args.command == "console":
            return _console(args)
        elif args.command == "down":
            _call(args.state_dir, "POST", "/shutdown")
            print("stopping (draining in-flight requests)")
        else:
            print(_call(args.state_dir, "POST", f"/services/{args.name}/{args.action}")["event"])
    except PlaneError as exc:
        print(f"turnout {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"turnout {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


def _console(args: argparse.Namespace) -> int:
    """A login URL good once for two minutes: the admin token itself never reaches a browser."""
    path = _call(args.state_dir, "POST", "/console/ticket")["path"]
    url = json.loads((args.state_dir / "plane.json").read_text())["admin"] + path
    print(url, flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0


class PlaneError(RuntimeError):
    pass


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _apply(args: argparse.Namespace) -> int:
    """Apply the manifests; with ``--wait``, follow readiness and rollout steps to their end."""
    import time

    from serving.spec.load import ManifestError, load_files

    docs = [{"path": str(p.resolve()), "text": p.read_text()} for p in args.files]
    since = time.time()
    answer = _call(args.state_dir, "POST", "/apply", {"documents": docs})
    for line in answer.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)
    printed = answer.get("events", [])
    for line in printed or ["unchanged"]:
        print(line, flush=True)
    if not args.wait:
        return 0
    try:
        services = [s.name for s in load_files(args.files).services]
    except ManifestError as exc:  # the plane accepted them, so this is unlikely
        raise PlaneError(str(exc)) from None
    from serving.control.local.live import follow

    return follow(lambda: _call(args.state_dir, "GET", "/status"), services,
                  timeout=args.timeout, stream=sys.stderr, since=since,
                  seen=tuple(printed))


def _to_delete(args: argparse.Namespace) -> dict[str, list[str]]:
    """Names given on the command line (services or graphs, as the plane has them) and the
    documents of ``-f`` files."""
    from serving.spec.load import ManifestError, load_files

    if not args.names and not args.files:
        raise PlaneError("name what to delete: turnout delete NAME... or -f FILE")
    services: list[str] = []
    graphs: list[str] = []
    if args.files:
        try:
            manifests = load_files(args.files)
        except ManifestError as exc:
            raise PlaneError(str(exc)) from None
        services += [s.name for s in manifests.services]
        graphs += [g.name for g in manifests.graphs]
    if args.names:
        known = _call(args.state_dir, "GET", "/status")
        running_graphs = set(known.get("graphs", []))
        for name in args.names:
            (graphs if name in running_graphs else services).append(name)
    return {"services": services, "graphs": graphs}


def _call(state_dir: Path, method: str, path: str, body: Any = None) -> dict[str, Any]:
    try:
        info = json.loads((state_dir / "plane.json").read_text())
    except (OSError, ValueError):
        raise PlaneError(f"no running plane found in {state_dir} (start one with turnout up)") \
            from None
    try:
        secret = token.read(state_dir)
    except OSError as exc:
        raise PlaneError(f"cannot read the plane's admin token in {state_dir}: {exc.strerror} "
                         "(run this as the user who started turnout up)") from None
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(info["admin"] + path, data=data, method=method,
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {secret}"})
    context = None
    if info.get("admin_cert"):  # turnout up --admin-tls: trust exactly the plane's certificate
        from serving.transport.tls import pinned_context

        try:
            context = pinned_context(Path(info["admin_cert"]))
        except (OSError, ValueError) as exc:
            raise PlaneError(f"cannot read the plane's TLS certificate "
                             f"{info['admin_cert']}: {exc}") from None
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("error", str(err))
        except ValueError:
            message = str(err)
        raise PlaneError(message) from None
    except urllib.error.URLError as err:
        raise PlaneError(f"plane at {info['admin']} is not answering ({err.reason}); "
                         f"remove {state_dir / 'plane.json'} if it is gone") from None
