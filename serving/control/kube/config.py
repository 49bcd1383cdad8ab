"""The controller's cluster settings from the chart's ``config.yaml`` (``TURNOUT_CONTROLLER_CONFIG``).

The Helm chart writes ``values.runtime`` and friends into a ConfigMap mounted in the controller
(charts/turnout/templates/configmap.yaml): images per framework family and which runtime uses
which family, the router's image and replicas, the model servers' drain time, KEDA's Prometheus
address, the image pull policy and secrets, the default resources of model servers and the
router, the router's Service type. This module maps that file onto :class:`~.render.Settings`;
command-line flags given explicitly still win.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from serving.control.kube.render import Settings


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


def _mapping(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be a mapping")
    return value
