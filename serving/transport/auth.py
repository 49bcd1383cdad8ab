"""Authentication for the data plane and the management APIs: API keys and JWT bearer tokens.

One implementation for the model server and the router (REST, the fast HTTP path and gRPC):

- **API keys** are stored as the SHA-256 of the key (hex), never the key: one entry per line in
  a file (``--api-keys-file``) or whitespace-separated in ``TURNOUT_API_KEYS``. An entry is
  ``HASH``, ``NAME:HASH`` or ``NAME:SCOPE,SCOPE:HASH`` (scopes default to ``inference``). The
  file is re-read when it changes (its modification time, size or inode; looked at no more than
  once a second), so keys rotate without a restart; a file that becomes unreadable or invalid
  keeps the keys read before, with an error in the log. A plain SHA-256 is the norm for
  high-entropy random keys (GitHub's and Stripe's tokens): a slow password hash protects
  guessable secrets, and costs every request. The presented key's digest is compared with every
  stored digest in constant time.
- **JWTs** are verified by PyJWT against a JWKS (a file, re-read when it changes, or an http(s)
  URL fetched by a background thread — never on a request's path — every
  ``jwks_refresh_seconds`` and soon after a token names a key id it does not hold). The issuer,
  the audience and the expiry are required and checked, with ``jwt_leeway`` seconds of clock
  skew; only asymmetric algorithms that fit the key are accepted (never ``none`` nor HMAC, so a
  public key can never be used as a shared secret). Scopes come from the ``scope`` (space
  separated) or ``scp`` claim. A verified token is remembered until it expires (at most
  5 minutes), so a client reusing its token pays one dictionary lookup.

Clients send ``Authorization: Bearer <key or token>`` or ``x-api-key: <key>`` (REST), or the
same as gRPC metadata. Scopes: ``inference`` (inference, metadata, a model's readiness) and
``management`` (the repository API, the router's admin API). Probes and Prometheus stay open:
``/v2/health/live``, ``/v2/health/ready``, ``/`` (KServe V1 liveness), ``/metrics``, the gRPC
``ServerLive``/``ServerReady`` RPCs, ``grpc.health.v1`` and server reflection (the public OIP
schema) — kubelet probes and scrapers cannot send credentials, and none of these reveals a model
or runs one.

Refusals follow RFC 6750: 401 with ``WWW-Authenticate: Bearer realm="turnout"`` when no
credential came (plus ``error="invalid_token"`` when one came and is not valid), 403 with
``error="insufficient_scope"`` for a valid credential without the scope; the body is
``{"error": ...}``. gRPC answers UNAUTHENTICATED / PERMISSION_DENIED. A presented key or token is
never echoed, nor logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.protocol.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("turnout.auth")

INFERENCE = "inference"
MANAGEMENT = "management"
SCOPES = frozenset({INFERENCE, MANAGEMENT})
REALM = 'Bearer realm="turnout"'

Headers = Sequence[tuple[bytes, bytes]]
Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]

# Open to anyone: probes and scrapers cannot send credentials (see the module docstring).
OPEN_PATHS = frozenset({"/", "/metrics", "/v2/health/live", "/v2/health/ready"})
_INFERENCE_SERVICE = "/inference.GRPCInferenceService/"
OPEN_METHODS = frozenset({_INFERENCE_SERVICE + "ServerLive", _INFERENCE_SERVICE + "ServerReady",
                          "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
_OPEN_SERVICES = ("/grpc.reflection.v1alpha.ServerReflection/",
                  "/grpc.reflection.v1.ServerReflection/")
# How often a keys or JWKS file's metadata is looked at (not per request).
RELOAD_CHECK_SECONDS = 1.0
# A verified token is remembered at most this long (and never past its expiry).
TOKEN_CACHE_SECONDS = 300.0
TOKEN_CACHE_SIZE = 4096
# Asymmetric algorithms by JWK key type (and curve): a token's ``alg`` must fit its key.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}


class AuthConfigError(ValueError):
    """Settings, a keys file or a JWKS that cannot be used; the message says which and why."""


class AuthError(Unauthenticated):
    """401: no credential, or one that is not valid; ``challenge`` is the WWW-Authenticate."""

    def __init__(self, message: str, *, invalid: bool = True) -> None:
        super().__init__(message)
        self.challenge = f'{REALM}, error="invalid_token"' if invalid else REALM


class ScopeError(PermissionDenied):
    """403: a valid credential without the scope the call needs."""

    def __init__(self, principal: Principal, scope: str, message: str | None = None) -> None:
        super().__init__(message or f"credential {principal.name!r} lacks the {scope!r} scope")
        self.challenge = f'{REALM}, error="insufficient_scope", scope="{scope}"'


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: an API key's name or a token's subject, and what it may do."""

    name: str
    scopes: frozenset[str]
    kind: str  # "api-key", "jwt" or "admin-token"

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ScopeError(self, scope)


# -- settings ---------------------------------------------------------------------------------

class AuthFields(BaseSettings):
    """The authentication settings of a process; the model server's and the router's settings
    inherit them (so ``TURNOUT_API_KEYS_FILE`` and ``TURNOUT_ROUTER_API_KEYS_FILE``)."""

    model_config = SettingsConfigDict(env_prefix="TURNOUT_", extra="ignore")

    api_keys_file: Path | None = Field(
        None, description="File of API keys, one per line as HASH, NAME:HASH or "
        "NAME:SCOPE,SCOPE:HASH (HASH: the key's SHA-256 in hex; `turnout api-key new` makes "
        "one); re-read when it changes")
    api_keys: str | None = Field(None, description="API key entries as in the file, separated "
                                 "by whitespace (for an environment variable)")
    jwks: str | None = Field(None, description="JWKS to verify JWT bearer tokens with: a file "
                             "path or an http(s) URL")
    jwt_issuer: str | None = Field(None, description="Required `iss` of tokens (with --jwks)")
    jwt_audience: str | None = Field(None, description="Required `aud` of tokens (with --jwks)")
    jwt_leeway: float = Field(30.0, ge=0, le=3600, description="Clock skew allowed when "
                              "checking exp/nbf/iat (seconds)")
    jwks_refresh_seconds: float = Field(300.0, ge=10, description="How often a JWKS URL is "
                                        "fetched again (in the background)")
    insecure: bool = Field(False, description="Allow a non-loopback bind address without any "
                           "authentication (a warning is logged)")

    @property
    def auth_configured(self) -> bool:
        return bool(self.api_keys_file or self.api_keys or self.jwks)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds loopback only (``0.0.0.0``, ``::`` and names other than
    ``localhost`` are not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_error(command: str, hosts: Iterable[str], settings: AuthFields) -> str | None:
    """The one-line refusal for a process that would listen beyond loopback without any
    authentication; None when it may start (a warning is logged under ``--insecure``)."""
    exposed = sorted({h for h in hosts if not is_loopback(h)})
    if not exposed or settings.auth_configured:
        return None
    if settings.insecure:
        log.warning("%s listens on %s without authentication (--insecure): anyone who can "
                    "reach it can call it", command, ", ".join(exposed))
        return None
    return (f"{command}: refusing to listen on {', '.join(exposed)} without authentication; "
            "configure --api-keys-file or --jwks (docs/security.md), bind 127.0.0.1, or pass "
            "--insecure if the network is protected otherwise")


# -- API keys ---------------------------------------------------------------------------------

def new_key() -> str:
    """A fresh random API key (256 bits; the prefix lets secret scanners find leaked ones)."""
    return "tnt_" + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    """The stored form of a key: its SHA-256 in hex."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


@dataclass(frozen=True, slots=True)
class _Key:
    digest: bytes
    principal: Principal


def parse_keys(text: str, *, source: str, separator: str | None = "\n") -> list[_Key]:
    """Entries of a keys file (or of the variable, ``separator=None``: any whitespace)."""
    keys: list[_Key] = []
    errors: list[str] = []
    items = text.split(separator) if separator else text.split()
    for number, raw in enumerate(items, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}: entry {number}" if separator is None else f"{source}:{number}"
        fields = line.split(":")
        if len(fields) > 3:
            errors.append(f"{where}: expected HASH, NAME:HASH or NAME:SCOPES:HASH")
            continue
        digest = fields[-1].strip().lower()
        name = fields[0].strip() if len(fields) > 1 else f"key-{digest[:8]}"
        scopes = frozenset(s.strip() for s in fields[1].split(",") if s.strip()) \
            if len(fields) == 3 else frozenset({INFERENCE})
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            errors.append(f"{where}: not a SHA-256 in hex (store the key's hash, never the key: "
                          "`turnout api-key hash`)")
            continue
        unknown = scopes - SCOPES
        if unknown or not scopes:
            errors.append(f"{where}: unknown scope(s) {sorted(unknown)}; known: {sorted(SCOPES)}")
            continue
        if not name:
            errors.append(f"{where}: empty name")
            continue
        keys.append(_Key(bytes.fromhex(digest), Principal(name, scopes, "api-key")))
    digests = [k.digest for k in keys]
    if len(set(digests)) != len(digests):
        errors.append(f"{source}: the same key hash appears twice")
    if errors:
        raise AuthConfigError("invalid API keys:\n  " + "\n  ".join(errors))
    return keys


class _WatchedFile:
    """A file read again when its modification time, size or inode change, looked at no more
    than once per ``RELOAD_CHECK_SECONDS``. ``parse`` turns its text into the value; a failed
    read or parse keeps the previous value (logged), except on the first load (raised)."""

    def __init__(self, path: Path, parse: Callable[[str], Any], what: str) -> None:
        self.path, self._parse, self._what = path, parse, what
        self._stamp: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._failed: tuple[tuple[int, int, int] | None, str] | None = None
        self.value: Any = None
        self.generation = 0
        self.value = self._read()

    def current(self) -> Any:
        if time.monotonic() >= self._next_check:
            self._check()
        return self.value

    def _check(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking; the value it has is current enough
        try:
            self._next_check = time.monotonic() + RELOAD_CHECK_SECONDS
            try:
                stat = self.path.stat()
                stamp: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size,
                                                      stat.st_ino)
            except OSError as exc:
                stamp = None
                problem = f"{self._what} {self.path}: {exc.strerror}"
            else:
                if stamp == self._stamp:
                    return
                try:
                    self.value = self._read()
                    self.generation += 1
                    self._failed = None
                    log.info("%s %s re-read", self._what, self.path)
                    return
                except AuthConfigError as exc:
                    problem = str(exc)
            if (stamp, problem) != self._failed:  # said once per change, not every second
                self._failed = (stamp, problem)
                log.error("%s; keeping the %s read before", problem, self._what)
        finally:
            self._lock.release()

    def _read(self) -> Any:
        try:
            stat = self.path.stat()
            text = self.path.read_text()
        except OSError as exc:
            raise AuthConfigError(f"{self._what} {self.path}: {exc.strerror}") from None
        value = self._parse(text)
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return value


class KeyStore:
    """API keys from a file (watched) and/or a fixed set of entries."""

    def __init__(self, path: Path | None = None, entries: str | None = None) -> None:
        self._fixed = parse_keys(entries, source="API keys variable", separator=None) \
            if entries else []
        self._file = _WatchedFile(path, lambda text: parse_keys(text, source=str(path)),
                                  "API keys file") if path is not None else None
        self._loaded: list[_Key] | None = None
        self._all: tuple[_Key, ...] = tuple(self._fixed)

    def lookup(self, key: bytes) -> Principal | None:
        digest = hashlib.sha256(key).digest()
        keys = self._keys()
        found = None
        for entry in keys:  # every entry, always: the time taken says nothing about a match
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        return found

    def _keys(self) -> tuple[_Key, ...]:
        if self._file is None:
            return self._all
        loaded = self._file.current()
        if loaded is not self._loaded:  # the file was re-read
            self._loaded, self._all = loaded, (*self._fixed, *loaded)
        return self._all


class TokenFile:
    """A single secret token kept in a file (the router's admin token): the raw token, read
    again when the file changes."""

    def __init__(self, path: Path, *, name: str, scopes: frozenset[str]) -> None:
        self._principal = Principal(name, scopes, "admin-token")
        self._file = _WatchedFile(path, self._parse, "token file")

    @staticmethod
    def _parse(text: str) -> bytes:
        token = text.strip()
        if len(token) < 16:
            raise AuthConfigError("the token file holds no token of at least 16 characters")
        return hashlib.sha256(token.encode()).digest()

    def lookup(self, key: bytes) -> Principal | None:
        if hmac.compare_digest(hashlib.sha256(key).digest(), self._file.current()):
            return self._principal
        return None


def issue_token_file(path: Path) -> str:
    """A fresh random token written to ``path`` (mode 0600, created so, replacing any)."""
    path.unlink(missing_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


# -- JWT --------------------------------------------------------------------------------------

def _jwks_keys(doc: Any, source: str) -> dict[str | None, dict[str, Any]]:
    """The usable (asymmetric, signing) keys of a JWKS document by ``kid``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise AuthConfigError(f"JWKS {source}: expected {{\"keys\": [...]}}")
    keys: dict[str | None, dict[str, Any]] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") not in ("RSA", "EC", "OKP"):
            log.warning("JWKS %s: key %r of type %r ignored (only RSA, EC and OKP keys verify "
                        "tokens)", source, jwk.get("kid"), jwk.get("kty"))
            continue
        keys[jwk.get("kid")] = jwk
    return keys


def _parse_jwks_text(source: str) -> Callable[[str], dict[str | None, dict[str, Any]]]:
    def parse(text: str) -> dict[str | None, dict[str, Any]]:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise AuthConfigError(f"JWKS {source}: not JSON: {exc}") from None
        return _jwks_keys(doc, source)
    return parse


class _FileJwks:
    def __init__(self, path: Path) -> None:
        self._file = _WatchedFile(path, _parse_jwks_text(str(path)), "JWKS file")

    def keys(self) -> tuple[int, dict[str | None, dict[str, Any]]]:
        keys = self._file.current()
        return self._file.generation, keys

    def missing(self, kid: str | None) -> None:
        """A token named a key the file does not hold: nothing to do until the file changes."""


class _UrlJwks:
    """A JWKS URL fetched by a daemon thread: at start (waited for, briefly), every
    ``refresh`` seconds, and soon after a token names an unknown key (at most every 5 s).
    Requests only ever read the keys fetched last."""

    MIN_REFETCH_SECONDS = 5.0

    def __init__(self, url: str, refresh: float, *, timeout: float = 5.0) -> None:
        import jwt

        self.url, self._refresh = url, refresh
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, cache_keys=False,
                                       timeout=int(max(1, timeout)))
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._generation = 0
        self._wake = threading.Event()
        self._first = threading.Event()
        self._last_fetch = 0.0
        thread = threading.Thread(target=self._run, name="jwks-fetch", daemon=True)
        thread.start()
        if not self._first.wait(timeout + 1):
            log.error("JWKS %s: no answer yet; tokens are refused until it is fetched", url)

    def keys(self) -> tuple[int, dict[str | None, dict[str, Any]]]:
        return self._generation, self._keys

    def missing(self, kid: str | None) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            ok = self._fetch()
            self._first.set()
            # Failed: retry soon. Else wait for the refresh time or for an unknown key id.
            self._wake.wait(self.MIN_REFETCH_SECONDS if not ok else self._refresh)
            since = time.monotonic() - self._last_fetch
            if since < self.MIN_REFETCH_SECONDS:
                time.sleep(self.MIN_REFETCH_SECONDS - since)
            self._wake.clear()

    def _fetch(self) -> bool:
        import jwt

        self._last_fetch = time.monotonic()
        try:
            keys = _jwks_keys(self._client.fetch_data(), self.url)
        except (jwt.PyJWKClientError, AuthConfigError, OSError, ValueError) as exc:
            log.error("JWKS %s could not be fetched: %s", self.url, exc)
            return False
        if keys != self._keys:
            self._keys = keys
            self._generation += 1
            log.info("JWKS %s: %d signing key(s)", self.url, len(keys))
        return True


class JwtVerifier:
    """Verifies bearer JWTs against a JWKS; see the module docstring."""

    def __init__(self, jwks: str, *, issuer: str, audience: str, leeway: float,
                 refresh_seconds: float = 300.0) -> None:
        import jwt  # noqa: F401  (PyJWT with cryptography: fail at start when missing)

        self.issuer, self.audience, self.leeway = issuer, audience, leeway
        if jwks.startswith(("http://", "https://")):
            self._source: _FileJwks | _UrlJwks = _UrlJwks(jwks, refresh_seconds)
        else:
            self._source = _FileJwks(Path(jwks))
        self._cache: dict[str, tuple[Principal, float, int]] = {}
        self._built: dict[tuple[int, str | None, str], Any] = {}

    def verify(self, token: str) -> Principal:
        generation, keys = self._source.keys()
        cached = self._cache.get(token)
        if cached is not None and cached[2] == generation and time.time() < cached[1]:
            return cached[0]
        principal, expires = self._verify(token, generation, keys)
        if len(self._cache) >= TOKEN_CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = (principal, min(expires, time.time() + TOKEN_CACHE_SECONDS),
                              generation)
        return principal

    def _verify(self, token: str, generation: int, keys: dict[str | None, dict[str, Any]]
                ) -> tuple[Principal, float]:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        kid, alg = header.get("kid"), header.get("alg")
        jwk = keys.get(kid) if kid is not None or len(keys) != 1 else next(iter(keys.values()))
        if jwk is None:
            self._source.missing(kid)
            raise AuthError("token signed by an unknown key")
        if not isinstance(alg, str) or alg not in _algorithms(jwk):
            raise AuthError("token algorithm not accepted for its key")
        built = self._built.get((generation, kid, alg))
        if built is None:
            if len(self._built) > 256:
                self._built.clear()
            try:
                built = self._built[(generation, kid, alg)] = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                raise AuthError("token signed by an unusable key") from None
        try:
            claims = jwt.decode(token, key=built, algorithms=[alg], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not valid yet") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer not accepted") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature not valid") from None
        except jwt.PyJWTError:
            raise AuthError("token not valid") from None
        subject = claims.get("sub") or claims.get("client_id") or claims.get("azp") or "jwt"
        principal = Principal(str(subject)[:256], _scopes(claims), "jwt")
        return principal, float(claims["exp"]) + self.leeway


def _algorithms(jwk: dict[str, Any]) -> frozenset[str]:
    """The algorithms a token may use with ``jwk``: its own ``alg`` if it states one (and it is
    asymmetric), else those of its key type."""
    kty = jwk.get("kty")
    if kty == "RSA":
        family = _RSA_ALGORITHMS
    elif kty == "EC":
        family = frozenset({_EC_ALGORITHMS[jwk["crv"]]}) if jwk.get("crv") in _EC_ALGORITHMS \
            else frozenset()
    elif kty == "OKP":
        family = frozenset({"EdDSA"})
    else:
        family = frozenset()
    stated = jwk.get("alg")
    if stated is not None:
        return frozenset({stated}) & family
    return family


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


# -- the authenticator ------------------------------------------------------------------------

class KeySource(Protocol):
    """Anything that maps a presented key to a principal (API keys, an admin token)."""

    def lookup(self, key: bytes) -> Principal | None: ...


class Authenticator:
    """Credentials → :class:`Principal`, or :class:`AuthError`."""

    def __init__(self, keys: Sequence[KeySource] = (),
                 jwt: JwtVerifier | None = None) -> None:
        self.key_sources = tuple(keys)
        self.jwt = jwt

    def authenticate(self, authorization: bytes | None, api_key: bytes | None) -> Principal:
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not credential.strip():
                raise AuthError("unsupported Authorization scheme: send Bearer <key or token>")
            return self._credential(credential.strip())
        if api_key is not None and api_key.strip():
            return self._key(api_key.strip())
        raise AuthError("credentials required: send Authorization: Bearer <key or token> or "
                        "x-api-key: <key>", invalid=False)

    def from_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Principal:
        """From lower-cased raw HTTP headers (ASGI's, or the fast path's)."""
        authorization = api_key = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
        return self.authenticate(authorization, api_key)

    def from_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """From gRPC invocation metadata."""
        authorization = api_key = None
        for name, value in metadata or ():
            if name == "authorization":
                authorization = value if isinstance(value, bytes) else value.encode()
            elif name == "x-api-key":
                api_key = value if isinstance(value, bytes) else value.encode()
        return self.authenticate(authorization, api_key)

    def _credential(self, credential: bytes) -> Principal:
        if self.jwt is not None and credential.count(b".") == 2:
            try:
                token = credential.decode("ascii")
            except UnicodeDecodeError:
                raise AuthError("malformed token") from None
            return self.jwt.verify(token)
        return self._key(credential)

    def _key(self, key: bytes) -> Principal:
        for source in self.key_sources:
            principal = source.lookup(key)
            if principal is not None:
                return principal
        raise AuthError("credentials not valid")


def build_authenticator(settings: AuthFields, *, extra: Sequence[KeySource] = ()
                        ) -> Authenticator | None:
    """The authenticator the settings describe, or None when none is configured (and no
    ``extra`` source is given): the caller then installs no check at all."""
    keys: list[KeySource] = list(extra)
    if settings.api_keys_file is not None or settings.api_keys:
        keys.append(KeyStore(settings.api_keys_file, settings.api_keys))
    verifier = None
    if settings.jwks:
        check_auth_settings(settings)
        assert settings.jwt_issuer and settings.jwt_audience
        verifier = JwtVerifier(settings.jwks, issuer=settings.jwt_issuer,
                               audience=settings.jwt_audience, leeway=settings.jwt_leeway,
                               refresh_seconds=settings.jwks_refresh_seconds)
    if not keys and verifier is None:
        return None
    what = []
    if settings.api_keys_file is not None or settings.api_keys:
        what.append("API keys" + (f" from {settings.api_keys_file}"
                                  if settings.api_keys_file else ""))
    if verifier is not None:
        what.append(f"JWTs from {settings.jwt_issuer} for {settings.jwt_audience}")
    if what:
        log.info("authentication: %s", ", ".join(what))
    return Authenticator(keys, verifier)


# -- where a call needs which scope ------------------------------------------------------------

def path_scope(method: str, path: str) -> str | None:
    """The scope a REST call needs on the model server or the router's public port: None for
    the probes and /metrics, ``management`` for the repository API, else ``inference`` (unknown
    paths included: they answer 401 before 404)."""
    if path in OPEN_PATHS:
        return None
    if path.startswith("/v2/repository"):
        return MANAGEMENT
    return INFERENCE


def method_scope(method: str) -> str | None:
    """The scope a gRPC method (``/package.Service/Method``) needs."""
    if method in OPEN_METHODS or method.startswith(_OPEN_SERVICES):
        return None
    if method.startswith(_INFERENCE_SERVICE + "Repository"):
        return MANAGEMENT
    return INFERENCE


def refusal(err: Unauthenticated | PermissionDenied) -> Reply:
    """The REST answer for an authentication or scope failure."""
    challenge = getattr(err, "challenge", REALM)
    return err.http_status, orjson.dumps({"error": str(err)}), [
        (b"content-type", b"application/json"), (b"www-authenticate", challenge.encode())]


class Guard:
    """Decides REST calls: ``check`` returns None to let one through, else the refusal.

    ``scope_of(method, path)`` says which scope a call needs (None: open); ``authorize``
    (optional) may refuse an authenticated principal for the call's target (the router's
    per-service rules) by raising :class:`ScopeError`.
    """

    def __init__(self, authenticator: Authenticator, *,
                 scope_of: Callable[[str, str], str | None] = path_scope,
                 authorize: Callable[[Principal, str, str], None] | None = None) -> None:
        self.authenticator = authenticator
        self.scope_of = scope_of
        self.authorize = authorize

    def principal(self, method: str, path: str, headers: Headers) -> Principal | None:
        """The caller, checked for the call's scope; None for an open call. Raises
        :class:`AuthError` or :class:`ScopeError`."""
        scope = self.scope_of(method, path)
        if scope is None:
            return None
        principal = self.authenticator.from_headers(headers)
        principal.require(scope)
        if self.authorize is not None:
            self.authorize(principal, method, path)
        return principal

    def check(self, method: str, path: str, headers: Headers) -> Reply | None:
        try:
            self.principal(method, path, headers)
        except (Unauthenticated, PermissionDenied) as err:
            return refusal(err)
        return None


class GuardedApp:
    """ASGI middleware: every HTTP request passes ``guard`` before reaching ``app``. A refused
    request is answered without its body being read (uvicorn discards it)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app, self.guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.guard.check(scope["method"], scope["path"], scope["headers"])
            if refused is not None:
                status, body, headers = refused
                await send({"type": "http.response.start", "status": status,
                            "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        elif scope["type"] == "websocket":  # no websocket route exists; refuse anyway
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


# -- command line -----------------------------------------------------------------------------

def add_auth_flags(parser: Any) -> None:
    """The authentication flags of ``turnout serve`` and ``turnout router`` (unset flags fall
    through to the ``TURNOUT_*`` variables)."""
    parser.add_argument("--api-keys-file", type=Path, help="API keys file: one HASH, NAME:HASH "
                        "or NAME:SCOPE,SCOPE:HASH per line (`turnout api-key new`); re-read "
                        "when it changes (docs/security.md)")
    parser.add_argument("--jwks", help="JWKS file or http(s) URL to verify JWT bearer tokens")
    parser.add_argument("--jwt-issuer", help="required `iss` of JWTs (needed with --jwks)")
    parser.add_argument("--jwt-audience", help="required `aud` of JWTs (needed with --jwks)")
    parser.add_argument("--jwt-leeway", type=float, help="clock skew allowed on exp/nbf "
                        "(seconds, default 30)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="allow a non-loopback --host without authentication (logs a "
                        "warning); for networks protected otherwise (NetworkPolicy, a mesh)")


def check_auth_settings(settings: AuthFields) -> None:
    """Refuse, with :class:`AuthConfigError`, settings that cannot work: an unreadable or
    invalid keys file, a JWKS file that does not parse, --jwks without issuer and audience.
    Starts nothing (a JWKS URL is fetched by the process that serves)."""
    if settings.api_keys_file is not None or settings.api_keys:
        KeyStore(settings.api_keys_file, settings.api_keys)
    if settings.jwks:
        if not settings.jwt_issuer or not settings.jwt_audience:
            raise AuthConfigError("--jwks needs --jwt-issuer and --jwt-audience: a JWKS is "
                                  "often shared by many applications, so a token must be "
                                  "checked to be meant for this one")
        try:
            import jwt  # noqa: F401
        except ImportError:
            raise AuthConfigError("--jwks needs PyJWT with cryptography (pip install "
                                  "'pyjwt[crypto]')") from None
        if not settings.jwks.startswith(("http://", "https://")):
            _FileJwks(Path(settings.jwks))
