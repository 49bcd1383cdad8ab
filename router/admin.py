"""The admin API: read and replace the routes, shift weights, reload the file, see endpoints.

Bound to loopback by default (see ``RouterSettings.admin_host``), and every call but
``GET /metrics`` needs the admin token or a ``management`` credential, even there
(router/access.py). Every change goes through the
same validation as the file and is applied as one table swap, so a rejected change leaves the
running routes untouched and an accepted one drops no request in flight.

| method | path | does |
| --- | --- | --- |
| GET | /config | the routes in force, as JSON |
| PUT | /config | replace the routes (YAML or JSON body) |
| POST | /reload | re-read the routes file |
| PUT | /services/{name}/weights | ``{"variant": weight, ...}``; variants not named keep theirs |
| GET | /status | every endpoint: outstanding, healthy, ejected; its variant's pending and held |
| GET | /metrics | the public port's Prometheus text (the plane reads it here: TLS and mTLS stay public) |
| GET | /mirror/disagreements | shadow answers unlike the primary's, newest first (?service=, ?limit=) |
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from router.core import Router
from router.disagreements import RING_SIZE
from router.http_util import read_body, send_error, send_json, send_response
from serving.protocol.errors import InvalidInput, ModelNotFound, TurnoutError, bounded_message
from serving.spec.routes import ConfigError, RouterConfig, load_config_text, parse_config

_WEIGHTS = re.compile(r"^/services/([^/]+)/weights$")


class AdminApp:
    def __init__(self, router: Router, *, reload: Callable[[], RouterConfig],
                 check: Callable[[RouterConfig], RouterConfig] = lambda config: config) -> None:
        self.router = router
        self.reload = reload
        self.check = check  # refuses, with ConfigError, routes this router cannot serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if path == "/config" and method == "GET":
                return await send_json(send, 200, _dump(self.router.table.config))
            if path == "/status" and method == "GET":
                return await send_json(send, 200, self._status())
            if path == "/metrics" and method == "GET":
                return await send_response(send, 200,
                                           generate_latest(self.router.metrics.registry),
                                           [(b"content-type", CONTENT_TYPE_LATEST.encode())])
            if path == "/mirror/disagreements" and method == "GET":
                return await send_json(send, 200, self._disagreements(scope))
            if path == "/reload" and method == "POST":
                self.router.apply(_checked(self.reload))
                return await send_json(send, 200, {"applied": True})
            body = await read_body(receive, None, 16 * 1024 * 1024)
            if path == "/config" and method == "PUT":
                self.router.apply(_checked(lambda: self.check(
                    load_config_text(body, source="PUT /config"))))
                return await send_json(send, 200, {"applied": True})
            match = _WEIGHTS.match(path)
            if match and method == "PUT":
                config = self._with_weights(match.group(1), body)
                self.router.apply(config)
                return await send_json(send, 200, {"applied": True})
            await send_json(send, 404, {"error": bounded_message(f"Not Found: {method} {path}")})
        except TurnoutError as err:
            if isinstance(err, InvalidInput):
                self.router.metrics.reloads.labels("rejected").inc()
            await send_error(send, err)

    def _with_weights(self, service: str, body: bytes) -> RouterConfig:
        try:
            weights = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"malformed JSON: {exc}") from None
        if not isinstance(weights, dict):
            raise InvalidInput('body must be {"variant": weight, ...}')
        doc = _dump(self.router.table.config)
        for item in doc["services"]:
            if item["name"] == service:
                known = {v["name"] for v in item["variants"]}
                unknown = set(weights) - known
                if unknown:
                    raise InvalidInput(f"service {service!r} has no variants {sorted(unknown)}")
                for variant in item["variants"]:
                    variant["weight"] = weights.get(variant["name"], variant["weight"])
                return _checked(lambda: self.check(parse_config(doc, source="weights")))
        raise ModelNotFound(f"service {service!r} is not configured")

    def _disagreements(self, scope: Scope) -> dict[str, Any]:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        service = query.get("service", [None])[-1]
        try:
            limit = int(query.get("limit", [RING_SIZE])[-1])
        except ValueError:
            raise InvalidInput("limit must be an integer") from None
        if limit < 1:
            raise InvalidInput("limit must be at least 1")
        records = self.router.shadower.disagreements.recent(service=service, limit=limit)
        return {"disagreements": [r.to_json() for r in records]}

    def _status(self) -> dict[str, Any]:
        """A row per endpoint; ``pending`` (in flight) and ``held`` (waiting for a ready
        endpoint) are the variant's, repeated on each of its rows. A variant that lists no
        endpoint (scaled to zero) has one row, with ``protocol`` and ``address`` null, so its
        ``held`` requests — the demand to start a replica — are visible."""
        now = time.monotonic()
        holds = self.router.holds
        rows = []
        for service in self.router.table.services.values():
            for variant in service.variants.values():
                counts = {"pending": variant.gate.pending,
                          "held": holds.held(service.name, variant.name)}
                endpoints = [("http", e) for e in variant.http.endpoints] + \
                    [("grpc", e) for e in variant.grpc.endpoints]
                if not endpoints:
                    rows.append({"service": service.name, "variant": variant.name,
                                 "protocol": None, "address": None, "outstanding": 0,
                                 "healthy": False, "ejected_seconds": 0.0, **counts})
                for proto, endpoint in endpoints:
                    rows.append({
                        "service": service.name, "variant": variant.name, "protocol": proto,
                        "address": endpoint.address, "outstanding": endpoint.outstanding,
                        "healthy": endpoint.healthy,
                        "ejected_seconds": max(0.0, round(endpoint.ejected_until - now, 3)),
                        **counts})
        return {"endpoints": rows}


def _dump(config: RouterConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", by_alias=True, exclude_none=True)


def _checked(build: Callable[[], RouterConfig]) -> RouterConfig:
    """Run a config builder, turning a validation failure into a 400 for the caller."""
    try:
        return build()
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from None
