"""The controller's cluster settings from the chart's ``config.yaml`` (``TURNOUT_CONTROLLER_CONFIG``).

The Helm chart writes ``values.runtime`` and friends into a ConfigMap mounted in the controller
(charts/turnout/templates/configmap.yaml): images per framework family and which runtime uses
which family, the router's image and replicas, the model servers' drain time, KEDA's Prometheus
address, the image pull policy and secrets, the default resources of model servers and the
router, the router's Service type; who may call the router and the replicas, their TLS Secrets and the
predictors' NetworkPolicy (serving/control/kube/secure.py). This module maps that file onto
:class:`~.render.Settings`, refusing values that cannot work with a message naming the key;
command-line flags given explicitly still win.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from serving.control.kube.render import Settings
from serving.control.kube.secure import AuthSettings, TlsSettings

# A Secret's or ConfigMap's name (DNS-1123 subdomain).
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PEER_KEYS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def load(path: Path, settings: Settings) -> Settings:
    """``settings`` with what ``path`` says (keys it leaves out keep their value)."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    changes: dict[str, Any] = {}
    images = _mapping(doc, "images", path)
    if images:
        changes["images"] = {str(k): str(v) for k, v in images.items()}
    runtimes = _mapping(doc, "runtimes", path)
    if runtimes:
        unknown = sorted(set(map(str, runtimes.values())) - set(changes.get("images", {})))
        if unknown and images:
            raise ConfigError(f"{path}: runtimes: families {unknown} have no image in images")
        changes["runtime_families"] = {str(k): str(v) for k, v in runtimes.items()}
    router = _mapping(doc, "router", path)
    if router.get("image"):
        changes["router_image"] = str(router["image"])
    if router.get("replicas") is not None:
        changes["router_replicas"] = int(router["replicas"])
    if router.get("serviceType"):
        changes["router_service_type"] = str(router["serviceType"])
    if router.get("resources"):
        changes["router_resources"] = dict(router["resources"])
    changes["router_auth"] = _auth(router, "router", path)
    changes["router_tls"] = _tls(router, "router", path)
    ca_file = _mapping(router, "tls", path, "router.").get("controllerCAFile")
    if ca_file:
        changes["router_ca_file"] = str(ca_file)
    server = _mapping(doc, "modelServer", path)
    if server.get("drainSeconds") is not None:
        changes["drain_seconds"] = int(server["drainSeconds"])
    if server.get("resources"):
        changes["server_resources"] = dict(server["resources"])
    trusted = server.get("trustedSources") or []
    if not isinstance(trusted, list):
        raise ConfigError(f"{path}: modelServer.trustedSources must be a list of URI prefixes")
    if trusted:
        changes["trusted_sources"] = tuple(str(s) for s in trusted)
    changes["server_auth"] = _auth(server, "modelServer", path)
    changes["server_tls"] = _tls(server, "modelServer", path)
    changes.update(_network_policy(server, path))
    secrets = doc.get("imagePullSecrets") or []
    if not isinstance(secrets, list) or not all(isinstance(s, dict) for s in secrets):
        raise ConfigError(f"{path}: imagePullSecrets must be a list of {{name: ...}}")
    if secrets:
        changes["image_pull_secrets"] = tuple({"name": str(s["name"])} for s in secrets)
    keda = _mapping(doc, "keda", path)
    if keda.get("prometheusUrl"):
        changes["prometheus_url"] = str(keda["prometheusUrl"])
    if doc.get("imagePullPolicy"):
        changes["image_pull_policy"] = str(doc["imagePullPolicy"])
    return replace(settings, **changes)


def _mapping(doc: dict[str, Any], key: str, path: Path, where: str = "") -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}{key} must be a mapping")
    return value


def _known(doc: dict[str, Any], keys: set[str], where: str, path: Path) -> None:
    """Refuse a misspelt key rather than run with the setting silently off."""
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise ConfigError(f"{path}: {where}: unknown keys {unknown} (known: {sorted(keys)})")


def _name(doc: dict[str, Any], key: str, where: str, path: Path) -> str | None:
    value = doc.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 253 or not _OBJECT_NAME.match(value):
        raise ConfigError(f"{path}: {where}.{key}: {value!r} is not a Secret/ConfigMap name "
                          "(lower case letters, digits, '-' and '.')")
    return value


def _flag(doc: dict[str, Any], key: str, where: str, path: Path, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {where}.{key} must be true or false, not {value!r}")
    return value


def _auth(section: dict[str, Any], where: str, path: Path) -> AuthSettings:
    """``<where>.auth``: an API keys Secret and/or JWT (a JWKS from one Secret, ConfigMap or
    https URL, with the issuer and audience tokens must carry)."""
    where = f"{where}.auth"
    auth = _mapping(section, "auth", path, where.removesuffix("auth"))
    _known(auth, {"apiKeysSecret", "jwt"}, where, path)
    jwt = _mapping(auth, "jwt", path, f"{where}.")
    where_jwt = f"{where}.jwt"
    _known(jwt, {"jwksSecret", "jwksConfigMap", "jwksUrl", "issuer", "audience",
                 "leewaySeconds"}, where_jwt, path)
    secret = _name(jwt, "jwksSecret", where_jwt, path)
    config_map = _name(jwt, "jwksConfigMap", where_jwt, path)
    url = jwt.get("jwksUrl") or None
    sources = [k for k, v in (("jwksSecret", secret), ("jwksConfigMap", config_map),
                              ("jwksUrl", url)) if v]
    if len(sources) > 1:
        raise ConfigError(f"{path}: {where_jwt}: one JWKS source, not {sources}")
    if url is not None and not (isinstance(url, str) and url.startswith("https://")):
        raise ConfigError(f"{path}: {where_jwt}.jwksUrl: {url!r} must be an https:// URL "
                          "(keys fetched over plain HTTP could be swapped on the way)")
    issuer, audience = jwt.get("issuer") or None, jwt.get("audience") or None
    if sources and not (issuer and audience):
        raise ConfigError(f"{path}: {where_jwt}: issuer and audience are required with a JWKS "
                          "(tokens from another issuer or for another audience must fail)")
    if not sources and (issuer or audience):
        raise ConfigError(f"{path}: {where_jwt}: issuer/audience without a JWKS "
                          "(jwksSecret, jwksConfigMap or jwksUrl)")
    leeway = jwt.get("leewaySeconds")
    if leeway is not None and (isinstance(leeway, bool) or not isinstance(leeway, int | float)
                               or not 0 <= leeway <= 3600):
        raise ConfigError(f"{path}: {where_jwt}.leewaySeconds must be seconds from 0 to 3600")
    return AuthSettings(api_keys_secret=_name(auth, "apiKeysSecret", where, path),
                        jwks_secret=secret, jwks_config_map=config_map, jwks_url=url,
                        jwt_issuer=issuer and str(issuer), jwt_audience=audience and str(audience),
                        jwt_leeway_seconds=float(leeway) if leeway is not None and sources
                        else None)


def _tls(section: dict[str, Any], where: str, path: Path) -> TlsSettings:
    """``<where>.tls``: a kubernetes.io/tls Secret; ``verifyClients``: mTLS on its ca.crt."""
    where = f"{where}.tls"
    tls = _mapping(section, "tls", path, where.removesuffix("tls"))
    _known(tls, {"secretName", "verifyClients", "controllerCAFile"}, where, path)
    secret = _name(tls, "secretName", where, path)
    verify = _flag(tls, "verifyClients", where, path, False)
    if verify and secret is None:
        raise ConfigError(f"{path}: {where}.verifyClients needs secretName (mTLS is TLS with "
                          "client certificates)")
    return TlsSettings(secret=secret, verify_clients=verify)


def _network_policy(server: dict[str, Any], path: Path) -> dict[str, Any]:
    """``modelServer.networkPolicy``: on unless ``enabled: false``; ``allowFrom``:
    NetworkPolicyPeer objects admitted besides the router (e.g. Prometheus)."""
    where = "modelServer.networkPolicy"
    policy = _mapping(server, "networkPolicy", path, "modelServer.")
    _known(policy, {"enabled", "allowFrom"}, where, path)
    peers = policy.get("allowFrom") or []
    if not isinstance(peers, list):
        raise ConfigError(f"{path}: {where}.allowFrom must be a list of NetworkPolicyPeer "
                          "objects (podSelector, namespaceSelector, ipBlock)")
    for i, peer in enumerate(peers):
        if not isinstance(peer, dict) or not peer or set(peer) - _PEER_KEYS:
            raise ConfigError(f"{path}: {where}.allowFrom[{i}]: {peer!r} is not a "
                              "NetworkPolicyPeer (keys: podSelector, namespaceSelector, ipBlock)")
    return {"network_policy": _flag(policy, "enabled", where, path, True),
            "network_policy_allow_from": tuple(peers)}
