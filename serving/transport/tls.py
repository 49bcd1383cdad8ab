"""TLS for every listener and every upstream hop, shared by the model server, the router and the
control plane: server contexts for uvicorn, gRPC server credentials, client contexts and gRPC
channel credentials, and certificate reload without a restart.

A listener is given a :class:`ServerTls` (certificate chain, private key, optionally the CA
that client certificates must chain to: mTLS). :class:`CertificateReloader` loads them once at
start (a bad file stops the start with a message naming it) and afterwards watches the files'
modification times, at most once a second:

- uvicorn: the :class:`ssl.SSLContext` handed to ``loop.create_server`` is loaded again in
  place (``load_cert_chain`` on the same context), from a private copy of files already checked
  to form a pair, so a half-written pair never reaches a live context; new handshakes present
  the new certificate, connections already open keep theirs.
- gRPC (threaded and aio engines): ``grpc.dynamic_ssl_server_credentials`` asks a fetcher
  before each new connection's handshake; it returns the new certificate configuration once
  after a change, else None.

A replaced client CA is added to what REST listeners trust (OpenSSL cannot remove a CA from a
live context: a CA taken out of the bundle is still trusted there until a restart); gRPC
listeners trust exactly the new bundle.

With TLS off none of this is built: the plain paths do not change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("turnout.tls")

RELOAD_CHECK_SECONDS = 1.0


class TlsError(ValueError):
    """TLS settings that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ServerTls:
    """What a TLS listener serves: its certificate chain and key, and for mTLS the CA bundle
    client certificates must chain to (clients without one are refused at the handshake)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def server_tls(cert: Path | str | None, key: Path | str | None,
               client_ca: Path | str | None = None) -> ServerTls | None:
    """The listener settings from the three flags: None when TLS is off; :class:`TlsError` for
    a key without a certificate (or the reverse), or a client CA without either."""
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS with "
                           "client certificates)")
        return None
    if cert is None or key is None:
        raise TlsError("--tls-cert and --tls-key go together")
    return ServerTls(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)


def check_server_tls(tls: ServerTls | None) -> None:
    """Load the files once, so settings validation refuses a bad pair before any port opens."""
    if tls is not None:
        _new_server_context(_read(tls), tls)


@dataclass(frozen=True)
class _Loaded:
    """One consistent reading of a listener's files."""

    version: int
    stamp: tuple[tuple[int, int, int], ...]
    cert: bytes
    key: bytes
    client_ca: bytes | None


def _stamp(tls: ServerTls) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in (tls.cert, tls.key, tls.client_ca):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _read(tls: ServerTls, version: int = 1) -> _Loaded:
    def read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TlsError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None

    stamp = _stamp(tls)
    return _Loaded(version, stamp, read(tls.cert, "certificate"), read(tls.key, "key"),
                   read(tls.client_ca, "client CA") if tls.client_ca is not None else None)


class _PemFiles:
    """The PEM bytes as private files (``load_cert_chain`` reads only files), removed after."""

    def __init__(self, loaded: _Loaded) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="turnout-tls-"))  # mode 0700
        self.cert = self.folder / "cert.pem"
        self.key = self.folder / "key.pem"
        for path, data in ((self.cert, loaded.cert), (self.key, loaded.key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)

    def __enter__(self) -> _PemFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _load_pair(ctx: ssl.SSLContext, loaded: _Loaded, tls: ServerTls) -> None:
    with _PemFiles(loaded) as files:
        try:
            ctx.load_cert_chain(files.cert, files.key)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS certificate {tls.cert} and key {tls.key} cannot be used "
                           f"together: {exc.reason or exc}") from None


def _new_server_context(loaded: _Loaded, tls: ServerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    _load_pair(ctx, loaded, tls)
    if loaded.client_ca is not None:
        try:
            ctx.load_verify_locations(cadata=loaded.client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"TLS client CA {tls.client_ca} is not a PEM CA bundle: {exc}") \
                from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class CertificateReloader:
    """One listener's (or several listeners') certificate files, loaded at start and again
    whenever they change; see the module docstring."""

    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._loaded = _read(tls)
        _new_server_context(self._loaded, tls)  # refuses a bad pair now, naming the files
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None
        self._next_check = 0.0
        self._contexts: list[tuple[ssl.SSLContext, list[int]]] = []
        self.reloads = 0

    # -- the files ----------------------------------------------------------------------------

    def current(self) -> _Loaded:
        """The files as last loaded, looking at their modification times at most once a second
        (any thread); a change that does not load (a key not matching its certificate yet,
        while files are being replaced) is logged once and the previous pair stays."""
        now = time.monotonic()
        if now < self._next_check:
            return self._loaded
        with self._lock:
            if now < self._next_check:
                return self._loaded
            self._next_check = now + RELOAD_CHECK_SECONDS
            stamp = _stamp(self.tls)
            if stamp == self._loaded.stamp or stamp == self._failed_stamp:
                return self._loaded
            try:
                loaded = _read(self.tls, self._loaded.version + 1)
                _new_server_context(loaded, self.tls)
                if _stamp(self.tls) != loaded.stamp:  # changed while being read: next time
                    raise TlsError("the files changed while being read")
            except TlsError as exc:
                self._failed_stamp = stamp
                log.warning("TLS files changed but were not reloaded (the previous certificate "
                            "stays): %s", exc)
                return self._loaded
            self._loaded = loaded
            self._failed_stamp = None
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.tls.cert)
            return loaded

    # -- uvicorn ------------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """A server context for ``loop.create_server`` (uvicorn), kept up to date by
        :meth:`watch`."""
        loaded = self._loaded
        ctx = _new_server_context(loaded, self.tls)
        self._contexts.append((ctx, [loaded.version]))
        return ctx

    def uvicorn_factory(self) -> Any:
        """``uvicorn.Config(ssl_context_factory=...)``: uvicorn then serves HTTPS with
        :meth:`server_context` (and reports the ``https`` scheme to the app)."""
        return lambda config, default: self.server_context()

    def refresh_contexts(self) -> int:
        """Load a changed pair into every context handed out; how many were updated.

        Call it on the event loop that serves them (:meth:`watch` does): a context is never
        changed while the same thread is in a handshake with it."""
        loaded = self.current()
        updated = 0
        for ctx, applied in self._contexts:
            if applied[0] == loaded.version:
                continue
            try:
                _load_pair(ctx, loaded, self.tls)
                if loaded.client_ca is not None:
                    ctx.load_verify_locations(cadata=loaded.client_ca.decode("ascii", "replace"))
            except (TlsError, ssl.SSLError, ValueError) as exc:  # checked before: unexpected
                log.error("TLS context not reloaded: %s", exc)
                continue
            applied[0] = loaded.version
            updated += 1
        return updated

    async def watch(self, interval: float = RELOAD_CHECK_SECONDS) -> None:
        """Until cancelled: reload the contexts handed out when the files change."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.refresh_contexts()
            except Exception:  # never let a watcher bug take TLS reloads down silently
                log.exception("TLS reload check failed")

    # -- gRPC ---------------------------------------------------------------------------------

    def grpc_credentials(self) -> Any:
        """``grpc.ServerCredentials`` for ``add_secure_port`` (threaded and aio servers): the
        certificate is fetched again before a new connection's handshake after a change;
        with a client CA, clients must present a certificate it signed."""
        import grpc

        loaded = self._loaded
        given = [loaded.version]

        def configuration(of: _Loaded) -> Any:
            return grpc.ssl_server_certificate_configuration([(of.key, of.cert)],
                                                             root_certificates=of.client_ca)

        def fetch() -> Any:
            try:
                now = self.current()
            except Exception:  # called from gRPC's core: an exception there is only logged
                log.exception("TLS reload check failed")
                return None
            if now.version == given[0]:
                return None
            given[0] = now.version
            return configuration(now)

        return grpc.dynamic_ssl_server_credentials(
            configuration(loaded), fetch,
            require_client_authentication=loaded.client_ca is not None)


# -- clients: the router's upstream hops, the control plane's CLI --------------------------------


@dataclass(eq=False)
class ClientTls:
    """How a client verifies TLS servers (``ca``: a PEM bundle; None: the system's trust
    store) and, for servers that require one, the client certificate it presents.

    :attr:`context` and :attr:`channel_credentials` are built on first use (a router with no
    TLS upstream never reads the trust store) and shared by every connection after."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @functools.cached_property
    def context(self) -> ssl.SSLContext:
        return client_context(self)

    @functools.cached_property
    def channel_credentials(self) -> Any:
        return grpc_channel_credentials(self)


def client_tls(ca: Path | str | None, cert: Path | str | None = None,
               key: Path | str | None = None) -> ClientTls:
    if (cert is None) != (key is None):
        raise TlsError("a client certificate and its key go together")
    return ClientTls(Path(ca) if ca else None, Path(cert) if cert else None,
                     Path(key) if key else None)


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """An HTTP/1.1 client context that verifies the server's certificate and name."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if tls.cert is not None and tls.key is not None:
            ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"upstream TLS settings cannot be used: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def pinned_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate(s) in ``cert`` — a server's own
    certificate file — whatever their issuer and names: for loopback listeners whose
    certificate need not name 127.0.0.1 (the control plane's admin API)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the pinned certificate is the identity
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cafile=str(cert))
    return ctx


def grpc_channel_credentials(tls: ClientTls) -> Any:
    """``grpc.ChannelCredentials`` matching :func:`client_context` (gRPC verifies the target's
    host name against the certificate)."""
    import grpc

    def read(path: Path | None) -> bytes | None:
        try:
            return path.read_bytes() if path is not None else None
        except OSError as exc:
            raise TlsError(f"cannot read {path}: {exc.strerror or exc}") from None

    return grpc.ssl_channel_credentials(root_certificates=read(tls.ca),
                                        private_key=read(tls.key),
                                        certificate_chain=read(tls.cert))
