"""Authentication, TLS and network isolation of what the controller creates: pure functions.

The chart names Secrets (and a JWKS ConfigMap or URL); the pods mount them as whole volumes,
never ``subPath`` (the kubelet then swaps the files in place when a Secret changes, and the
processes' reloaders pick the new keys, JWKS and certificates up without a restart), and the
processes get the same flags ``turnout serve`` / ``turnout router`` take on a workstation:

- ``router.auth`` / ``modelServer.auth``: ``--api-keys-file`` (Secret key ``keys``, the format
  ``turnout api-key new`` writes) and/or ``--jwks`` (Secret or ConfigMap key ``jwks.json``, or
  an https URL) with ``--jwt-issuer`` / ``--jwt-audience``. A process with either drops
  ``--insecure``: it refuses callers without a credential. The router passes the caller's
  credential on, so replicas with auth check it again (give them the same keys or JWKS).
- ``router.tls`` / ``modelServer.tls``: a ``kubernetes.io/tls`` Secret (``tls.crt``,
  ``tls.key``; ``ca.crt`` for ``verifyClients``, i.e. mTLS). With replica TLS the routes name
  ``https://`` / ``grpcs://`` endpoints and the router verifies them against that Secret's
  ``ca.crt`` (and, with ``verifyClients``, presents its ``tls.crt`` as client certificate).
- Probes stay on open paths (``/v2/health/*``); HTTPS with TLS (the kubelet does not verify
  certificates); a TCP connect with mTLS, since the kubelet has no client certificate.
- A NetworkPolicy per namespace admits ingress to predictor pods from the router's pods only
  (plus ``allowFrom`` peers, e.g. Prometheus), so replicas that run ``--insecure`` are reachable
  from nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SECRETS_ROOT = "/var/run/turnout"
API_KEYS_KEY = "keys"          # the Secret key holding the keys file
JWKS_KEY = "jwks.json"         # the Secret / ConfigMap key holding the JWKS


@dataclass(frozen=True)
class AuthSettings:
    """Where a process's credentials come from (names of objects in the service's namespace)."""

    api_keys_secret: str | None = None
    jwks_secret: str | None = None
    jwks_config_map: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float | None = None

    @property
    def jwt(self) -> bool:
        return bool(self.jwks_secret or self.jwks_config_map or self.jwks_url)

    @property
    def configured(self) -> bool:
        return bool(self.api_keys_secret) or self.jwt


@dataclass(frozen=True)
class TlsSettings:
    """A ``kubernetes.io/tls`` Secret the process serves; ``verify_clients``: mTLS against its
    ``ca.crt``."""

    secret: str | None = None
    verify_clients: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.secret)


@dataclass(frozen=True)
class Wiring:
    """What one setting adds to a container: flags, pod volumes, container mounts."""

    args: list[str] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def __add__(self, other: Wiring) -> Wiring:
        return Wiring(self.args + other.args, self.volumes + other.volumes,
                      self.mounts + other.mounts)


def _mounted(volume: str, source: dict[str, Any]) -> Wiring:
    return Wiring(volumes=[{"name": volume, **source}],
                  mounts=[{"name": volume, "mountPath": f"{SECRETS_ROOT}/{volume}",
                           "readOnly": True}])


def _secret(name: str, keys: Sequence[str]) -> dict[str, Any]:
    # items: only the files the process reads; a missing key keeps the pod from starting
    # with an event naming it, rather than a process failing on an absent file.
    return {"secret": {"secretName": name, "items": [{"key": k, "path": k} for k in keys]}}


def file_in(volume: str, key: str) -> str:
    return f"{SECRETS_ROOT}/{volume}/{key}"


def auth_wiring(auth: AuthSettings) -> Wiring:
    """``--api-keys-file`` and ``--jwks ...`` from the settings, or ``--insecure`` without
    any: a pod listens on its pod address, which a process refuses unauthenticated unless
    told the network is protected otherwise (the NetworkPolicy below, for replicas)."""
    if not auth.configured:
        return Wiring(args=["--insecure"])
    out = Wiring()
    if auth.api_keys_secret:
        out += _mounted("api-keys", _secret(auth.api_keys_secret, [API_KEYS_KEY]))
        out += Wiring(args=["--api-keys-file", file_in("api-keys", API_KEYS_KEY)])
    if auth.jwt:
        if auth.jwks_url:
            jwks = auth.jwks_url
        else:
            source = _secret(auth.jwks_secret, [JWKS_KEY]) if auth.jwks_secret else \
                {"configMap": {"name": auth.jwks_config_map,
                               "items": [{"key": JWKS_KEY, "path": JWKS_KEY}]}}
            out += _mounted("jwks", source)
            jwks = file_in("jwks", JWKS_KEY)
        out += Wiring(args=["--jwks", jwks, "--jwt-issuer", str(auth.jwt_issuer),
                            "--jwt-audience", str(auth.jwt_audience)])
        if auth.jwt_leeway_seconds is not None:
            out += Wiring(args=["--jwt-leeway", f"{auth.jwt_leeway_seconds:g}"])
    return out


def tls_wiring(tls: TlsSettings) -> Wiring:
    """The listener's ``--tls-cert`` / ``--tls-key`` (and ``--tls-client-ca`` for mTLS)."""
    if not tls.enabled:
        return Wiring()
    keys = ["tls.crt", "tls.key"] + (["ca.crt"] if tls.verify_clients else [])
    out = _mounted("tls", _secret(str(tls.secret), keys))
    out += Wiring(args=["--tls-cert", file_in("tls", "tls.crt"), "--tls-key", file_in("tls", "tls.key")])
    if tls.verify_clients:
        out += Wiring(args=["--tls-client-ca", file_in("tls", "ca.crt")])
    return out


def upstream_wiring(replicas: TlsSettings) -> Wiring:
    """The router's side of replica TLS: verify them against their Secret's ``ca.crt`` and,
    when they require client certificates, present theirs (one Secret, one trust domain)."""
    if not replicas.enabled:
        return Wiring()
    keys = ["ca.crt"] + (["tls.crt", "tls.key"] if replicas.verify_clients else [])
    out = _mounted("upstream-tls", _secret(str(replicas.secret), keys))
    out += Wiring(args=["--upstream-ca", file_in("upstream-tls", "ca.crt")])
    if replicas.verify_clients:
        out += Wiring(args=["--upstream-cert", file_in("upstream-tls", "tls.crt"),
                            "--upstream-key", file_in("upstream-tls", "tls.key")])
    return out


def probe(path: str, tls: TlsSettings, **timing: int) -> dict[str, Any]:
    """A kubelet probe of an open health path: HTTPS under TLS (the kubelet skips certificate
    verification), a TCP connect under mTLS (it has no client certificate to present)."""
    if tls.verify_clients:
        return {"tcpSocket": {"port": "http"}, **timing}
    get: dict[str, Any] = {"path": path, "port": "http"}
    if tls.enabled:
        get["scheme"] = "HTTPS"
    return {"httpGet": get, **timing}


def schemes(tls: TlsSettings) -> tuple[str, str]:
    """The REST URL scheme and gRPC address prefix the routes give a replica's endpoints."""
    return ("https", "grpcs://") if tls.enabled else ("http", "")


def network_policy(name: str, namespace: str, *, predictors: Mapping[str, str],
                   router: Mapping[str, str], allow_from: Sequence[Mapping[str, Any]],
                   ports: Sequence[int], labels: Mapping[str, str],
                   owners: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ingress to every predictor pod of the namespace from the router's pods and the
    ``allow_from`` peers only, on the serving ports; everything else is dropped."""
    peers = [{"podSelector": {"matchLabels": dict(router)}}] + [dict(p) for p in allow_from]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels),
                         "ownerReferences": list(owners)},
            "spec": {"podSelector": {"matchLabels": dict(predictors)},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": peers,
                                  "ports": [{"protocol": "TCP", "port": p} for p in ports]}]}}

