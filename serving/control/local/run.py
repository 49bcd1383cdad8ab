"""``turnout up``: the composition root of the local control plane.

Order at start: read ``state.json`` back (a restart resumes every service, revision and
rollout where it was; a file that cannot be read stops here, naming it), validate every
manifest and storage path with the restored services (nothing starts if one is bad), start
the router on the public ports, open the admin API, apply the manifests, and wait until every
service has a ready replica (or fail, stopping everything). Order at stop (Ctrl-C, SIGTERM,
``turnout down``): the router drains first so no new request reaches a replica, then every
replica drains and stops, then ``plane.json`` goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from serving.control.local import token
from serving.control.local.admin import PlaneAdmin
from serving.control.local.metrics import PlaneMetrics
from serving.control.local.plane import Plane
from serving.control.local.processes import listening_socket, ours, stop_leftovers
from serving.control.local.routerproc import RouterProcess
from serving.control.local.statefile import StateFileError
from serving.control.policy import validate
from serving.control.registry import RegistryLink
from serving.spec.load import ManifestError, Manifests, last_documents, load_files
from serving.transport.auth import AuthConfigError, AuthFields, check_auth_settings, exposure_error
from serving.transport.bounded import BoundedHttpToolsProtocol
from serving.transport.logs import configure_logging
from serving.transport.tls import CertificateReloader, ServerTls, TlsError, server_tls
from serving.transport.tracing import trace_variables

log = logging.getLogger("turnout.control")


def up(args: argparse.Namespace) -> int:
    try:
        manifests = load_files(args.files)
    except ManifestError as exc:
        print(f"turnout up: {exc}", file=sys.stderr)
        return 2
    for line in manifests.warnings + validate.warnings(manifests.services):
        print(f"warning: {line}", file=sys.stderr)
    state_dir = args.state_dir.resolve()
    configure_logging(args.log_level, "text")
    if not _clear_stale(state_dir):
        print(f"turnout up: a plane is already running from {state_dir} (turnout down first)",
              file=sys.stderr)
        return 2
    return asyncio.run(_main(args, manifests, state_dir))


def _clear_stale(state_dir: Path) -> bool:
    """False if a plane runs from ``state_dir``; else stop what a plane that died there left
    running (its router and replicas, by the ids it recorded) and return True."""
    info = state_dir / "plane.json"
    try:
        pid = int(json.loads(info.read_text()).get("pid", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return True
    if pid != os.getpid() and ours(pid):
        return False
    try:
        recorded = json.loads((state_dir / "replicas.json").read_text())
        pids = [int(p) for group in recorded.values() for p in group]
    except (OSError, ValueError, TypeError, AttributeError):
        pids = []
    stopped = stop_leftovers(pids)
    log.warning("the plane in %s did not stop cleanly (pid %d)%s", state_dir, pid,
                f"; stopped {len(stopped)} of its processes" if stopped else "")
    info.unlink(missing_ok=True)
    return True


def _tls(args: argparse.Namespace) -> tuple[tuple[str, ...], CertificateReloader | None]:
    """The router's TLS flags for the public ports, and the admin API's certificates with
    ``--admin-tls``; :class:`TlsError` for unusable files (refused before anything starts)."""
    cert, key, client_ca = (getattr(args, name, None) for name in
                            ("tls_cert", "tls_key", "tls_client_ca"))
    tls = server_tls(cert, key, client_ca)
    if tls is None:
        if getattr(args, "admin_tls", False):
            raise TlsError("--admin-tls needs --tls-cert and --tls-key")
        return (), None
    tls = ServerTls(tls.cert.resolve(), tls.key.resolve(),
                    tls.client_ca.resolve() if tls.client_ca else None)
    admin = CertificateReloader(ServerTls(tls.cert, tls.key))  # loads both: a bad pair stops here
    flags = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--no-admin-tls")
    if tls.client_ca is not None:
        flags += ("--tls-client-ca", str(tls.client_ca))
    return flags, admin if getattr(args, "admin_tls", False) else None


def _auth(args: argparse.Namespace, manifests: Manifests) -> tuple[str, ...]:
    """The router's authentication flags from ``turnout up``'s (the replicas stay on
    loopback, unauthenticated); refuses a non-loopback --host without authentication unless
    --insecure, and per-service principals without authentication."""
    values = {name: getattr(args, name, None) for name in (
        "api_keys_file", "jwks", "jwt_issuer", "jwt_audience", "jwt_leeway", "insecure")}
    settings = AuthFields.model_construct(**{k: v for k, v in values.items() if v is not None})
    check_auth_settings(settings)
    refused = exposure_error("turnout up", [args.host], settings)
    if refused is not None:
        raise AuthConfigError(refused.removeprefix("turnout up: "))
    restricted = [isvc.name for isvc in manifests.services
                  if isvc.spec.turnout is not None and isvc.spec.turnout.auth is not None]
    if restricted and not settings.auth_configured:
        raise AuthConfigError(f"{', '.join(restricted)}: spec.turnout.auth names principals, "
                              "but the router authenticates no one: pass --api-keys-file or "
                              "--jwks")
    flags: list[str] = []
    if settings.api_keys_file is not None:
        flags += ["--api-keys-file", str(Path(settings.api_keys_file).resolve())]
    if settings.jwks:
        jwks = settings.jwks if settings.jwks.startswith(("http://", "https://")) \
            else str(Path(settings.jwks).resolve())
        flags += ["--jwks", jwks, "--jwt-issuer", str(settings.jwt_issuer),
                  "--jwt-audience", str(settings.jwt_audience)]
    if values["jwt_leeway"] is not None:
        flags += ["--jwt-leeway", str(values["jwt_leeway"])]
    if settings.insecure:
        flags.append("--insecure")
    return tuple(flags)


def model_roots(args: argparse.Namespace) -> tuple[Path, ...]:
    """Where local ``storageUri``s may point: ``--model-root``s, else the folder ``turnout up``
    runs in and those of its ``-f`` files — so a token holder cannot make the plane load
    (and, for pickles, run) any file its user can read. Empty (anywhere) only on request."""
    if args.any_model_path:
        log.warning("--any-model-path: local models may come from any path this user can read")
        return ()
    chosen = args.model_roots or [Path.cwd(), *(Path(f).parent for f in args.files)]
    return tuple(dict.fromkeys(Path(r).resolve() for r in chosen))


async def _main(args: argparse.Namespace, manifests: Manifests, state_dir: Path) -> int:
    try:
        tls_flags, admin_certificates = _tls(args)
    except TlsError as exc:
        print(f"turnout up: {exc}", file=sys.stderr)
        return 2
    try:
        auth_flags = _auth(args, manifests)
    except AuthConfigError as exc:
        print(f"turnout up: {exc}", file=sys.stderr)
        return 2
    # the router and every replica it starts read these (children inherit the environment)
    os.environ.update(trace_variables(args.trace_endpoint, args.trace_sample_ratio))
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(exist_ok=True)
    (state_dir / "routes.yaml").write_text("services: []\n")
    router = RouterProcess(state_dir, host=args.host, http_port=args.http_port,
                           grpc_port=args.grpc_port, tls_flags=tls_flags, auth_flags=auth_flags)
    trusted = tuple(args.trusted_sources) + (("*",) if args.trust_remote_pickle else ())
    plane = Plane(state_dir, router, metrics=PlaneMetrics(CollectorRegistry()),
                  trusted_sources=trusted,
                  model_roots=model_roots(args),
                  registry=RegistryLink(state_dir=state_dir, tracking_uri=args.registry_uri),
                  registry_poll=args.registry_poll)
    try:
        restored = plane.restore()
        if restored:  # the state holds the history: apply what each file ends with
            manifests = last_documents(manifests)
        plane.check(manifests, (await plane.locate(manifests))[1])
    except (ManifestError, StateFileError) as exc:
        print(f"turnout up: {exc}", file=sys.stderr)
        return 2
    if restored:
        log.info("restored %s from %s", ", ".join(restored), state_dir / "state.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # bound now, before the router starts: a port chosen here and bound later could be the one
    # chosen for the router's admin API, or one of the public ports the router has yet to bind
    admin_socket = listening_socket(avoid=(args.http_port, args.grpc_port))
    admin_port = int(admin_socket.getsockname()[1])
    admin = uvicorn.Server(uvicorn.Config(PlaneAdmin(plane, stop, token=token.issue(state_dir)),
                                          host="127.0.0.1",
                                          port=admin_port, log_config=None, access_log=False,
                                          http=BoundedHttpToolsProtocol, ws="none",
                                          lifespan="off", ssl_context_factory=(
                                              admin_certificates.uvicorn_factory()
                                              if admin_certificates else None)))
    admin.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    admin_task = asyncio.create_task(admin.serve(sockets=[admin_socket]))
    watcher = asyncio.create_task(admin_certificates.watch()) if admin_certificates else None
    code = 0
    try:
        await router.start()
        await plane.apply(manifests)
        scheme = "https" if admin_certificates else "http"
        (state_dir / "plane.json").write_text(json.dumps({
            "pid": os.getpid(), "admin": f"{scheme}://127.0.0.1:{admin_port}",
            **({"admin_cert": str(admin_certificates.tls.cert)} if admin_certificates else {}),
            "http_port": args.http_port, "grpc_port": args.grpc_port, "tls": bool(tls_flags)}))
        loop_task = asyncio.create_task(plane.run(stop))
        if not await _wait_ready(plane, args.ready_timeout, stop):
            code = 0 if stop.is_set() else 1   # asked to stop while starting: not a failure
            stop.set()
        else:
            names = ", ".join(plane.states)
            scheme = "https" if tls_flags else "http"
            print(f"turnout: serving {names} on {scheme}://{args.host}:{args.http_port} "
                  f"and grpc {args.host}:{args.grpc_port}{' (TLS)' if tls_flags else ''} "
                  f"(state in {state_dir})", flush=True)
        await stop.wait()
        await loop_task
    except RuntimeError as exc:
        print(f"turnout up: {exc}", file=sys.stderr)
        code = 1
    finally:
        log.info("draining")
        await plane.shutdown()
        admin.should_exit = True
        await admin_task
        if watcher is not None:
            watcher.cancel()
        (state_dir / "plane.json").unlink(missing_ok=True)
    return code


async def _wait_ready(plane: Plane, timeout: float, stop: asyncio.Event) -> bool:
    """Every service reachable: a ready stable replica, or scaled to zero (the router holds
    its requests while a replica starts)."""
    deadline = time.monotonic() + timeout
    progress = None
    if sys.stderr.isatty():  # replicas becoming ready, drawn from the status document
        from serving.control.local.live import Progress
        from serving.control.local.status import status

        progress = Progress(list(plane.states), stream=sys.stderr)
    try:
        while time.monotonic() < deadline and not stop.is_set():
            pending = [n for n, s in plane.states.items()
                       if not plane.supervisor.ready(s.stable) and s.stable not in plane.at_zero()]
            if progress is not None:  # after the check: the last frame shows the ready state
                progress.update(status(plane))
            if not pending:
                return True
            await asyncio.sleep(0.2)
    finally:
        if progress is not None:
            progress.close()
    if stop.is_set():
        return False
    for name, state in plane.states.items():
        for replica in plane.supervisor.replicas.get(state.stable, []):
            if replica.state != "ready":
                tail = replica.log_path.read_text(errors="replace")[-2000:] \
                    if replica.log_path.exists() else ""
                print(f"turnout up: {name} ({state.stable}) not ready after {timeout:.0f}s; "
                      f"{replica.log_path}:\n{tail}", file=sys.stderr)
                break
    return False
