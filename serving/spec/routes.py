"""The routing spec: services, variants, rules, stickiness, mirrors, upstream policy and graphs.

One typed model, validated on load with errors that name the offending field, so a bad routes
file is refused before it can replace a good one. Cross-references (a rule naming a variant, a
graph step naming a service) are checked here too, so the runtime never meets a dangling name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.spec.conditions import validate as validate_condition

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_HTTP_URL = re.compile(r"^https?://[^/\s:]+(:\d+)?/?$")
_GRPC_ADDR = re.compile(r"^(grpcs://)?[^/\s:]+:\d+$")  # grpcs://: TLS to the endpoint


class ConfigError(ValueError):
    """A routes file that cannot be used; the message lists every problem with its location."""


class _Model(BaseModel):
    # Unknown keys are errors: a typo such as ``wieght`` must not silently mean weight 0.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class HealthCheck(_Model):
    """Active checks: a GET of ``path`` on each REST endpoint every ``interval_seconds``."""

    enabled: bool = True
    path: str = "/v2/health/ready"
    interval_seconds: float = Field(2.0, gt=0, description="Time between checks of one endpoint")
    timeout_seconds: float = Field(1.0, gt=0, description="A check slower than this fails")
    unhealthy_threshold: int = Field(2, ge=1, description="Failed checks in a row to take it out")
    healthy_threshold: int = Field(1, ge=1, description="Passed checks in a row to bring it back")


class Upstream(_Model):
    """How the router treats the endpoints of one service's variants."""

    timeout_seconds: float = Field(30.0, gt=0, description="Whole request, all attempts included")
    connect_timeout_seconds: float = Field(2.0, gt=0, description="TCP connect to one endpoint")
    max_attempts: int = Field(3, ge=1, description="Tries of one request, each on another endpoint")
    retry_budget_ratio: float = Field(
        0.2, ge=0, le=1, description="Retries allowed per request over time (Linkerd-style budget), "
        "so retries cannot multiply load when a whole variant is failing")
    retry_budget_min_per_second: float = Field(10.0, ge=0, description="Retries always allowed")
    max_pending: int = Field(1024, ge=1, description="In-flight requests per variant; beyond it the "
                             "router answers 429 at once instead of queueing without bound")
    eject_consecutive_failures: int = Field(
        5, ge=1, description="Connect errors or 5xx in a row that eject an endpoint")
    eject_seconds: float = Field(10.0, gt=0, description="First ejection; doubles on each repeat")
    max_eject_seconds: float = Field(300.0, gt=0, description="Cap on the doubled ejection time")
    outlier_interval_seconds: float = Field(
        10.0, gt=0, description="Window over which each endpoint's 5xx share (a 500 included: "
        "the model failing) is compared with its peers' (Envoy's success-rate detection)")
    outlier_min_requests: int = Field(
        20, ge=1, description="Answers an endpoint needs in the window to be judged")
    outlier_min_error_rate: float = Field(
        0.5, gt=0, le=1, description="An endpoint with a lower 5xx share is never ejected for it")
    outlier_margin: float = Field(
        0.3, gt=0, le=1, description="How far above its peers' 5xx share an endpoint's must be; "
        "a model that fails on every replica alike is never ejected")
    max_ejected_share: float = Field(
        0.5, gt=0, le=1, description="Most of a variant's endpoints ejected for errors at once "
        "(at least one)")
    max_connections_per_endpoint: int = Field(256, ge=1, description="Keep-alive pool size")
    hold_seconds: float = Field(
        0.0, ge=0, description="Seconds a request may wait for a ready endpoint of its variant "
        "(one lists none, e.g. scaled to zero, or every endpoint fails its health check) before "
        "503 with Retry-After / UNAVAILABLE; held requests are the demand that scales a variant "
        "from zero. 0 (the default) never holds: the request is answered at once, and every "
        "variant must list an endpoint")
    max_held: int = Field(
        256, ge=1, description="Requests held at once per variant (as max_pending is per variant); "
        "one more is answered 503 with Retry-After / UNAVAILABLE at once")
    grpc_via_http: bool | Literal["auto"] = Field(
        "auto", description="Forward gRPC clients' ModelInfer to the variants' REST endpoints as "
        "protobuf over HTTP/1.1: true, false, or auto (when the health checks found that every "
        "REST endpoint of the variant offers it, as Turnout model servers do; docs/router.md)")
    health_check: HealthCheck = HealthCheck()


class Variant(_Model):
    """One deployment of a service's model: a pool of REST and gRPC endpoints."""

    name: str = Field(pattern=NAME)
    weight: float = Field(0, ge=0, description="Share of traffic; 0 means rules or mirrors only")
    model: str | None = Field(None, description="Model name at the endpoints (default: the service)")
    version: str | None = Field(None, description="Pin this model version at the endpoints")
    http: list[str] = Field(default_factory=list, description="REST base URLs (https:// for TLS)")
    grpc: list[str] = Field(default_factory=list, description="gRPC host:port addresses "
                            "(grpcs://host:port for TLS)")
    revision: str | None = Field(None, description="The revision behind this variant (set by "
                                 "the control plane), named in payload log events and mirror "
                                 "disagreements")

    @field_validator("http")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not _HTTP_URL.match(url):
                raise ValueError(f"{url!r} is not an http://host:port base URL")
        return [u.rstrip("/") for u in urls]

    @field_validator("grpc")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            if not _GRPC_ADDR.match(address):
                raise ValueError(f"{address!r} is not a host:port or grpcs://host:port address")
        return addresses

    @property
    def empty(self) -> bool:
        """Lists no endpoint at all (allowed only where its service holds requests)."""
        return not self.http and not self.grpc


class Rule(_Model):
    """Send matching requests to ``variant``; every listed header and cookie must match."""

    header: dict[str, str] = Field(default_factory=dict)
    cookie: dict[str, str] = Field(default_factory=dict)
    variant: str

    @field_validator("header")
    @classmethod
    def _lower(cls, header: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in header.items()}

    @model_validator(mode="after")
    def _not_empty(self) -> Rule:
        if not self.header and not self.cookie:
            raise ValueError("a rule needs a header or cookie to match")
        return self


class Sticky(_Model):
    """The same key (header or cookie value) always picks the same variant."""

    header: str | None = None
    cookie: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Sticky:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("sticky needs exactly one of header or cookie")
        if self.header is not None:
            object.__setattr__(self, "header", self.header.lower())
        return self


class Mirror(_Model):
    """Copies of a share of the primary requests to another variant; its answers are compared."""

    variant: str
    percent: float = Field(100, ge=0, le=100)
    max_in_flight: int = Field(64, ge=1, description="Shadow requests outstanding; more are dropped "
                               "so a slow shadow cannot hold memory or sockets without bound")
    timeout_seconds: float = Field(10.0, gt=0)


class PayloadLog(_Model):
    """KServe's ``predictor.logger``: each request and response of a service as a CloudEvent
    (router/payload_log.py). Sent from a bounded queue, never in the request's way."""

    url: str = Field(description="Where events go: http(s)://... (binary content mode POST, "
                     "as KServe's agent sends), or a JSON-lines file: file:///abs/path.jsonl "
                     "or an absolute path ending in .jsonl (structured mode, one event a line)")
    mode: Literal["all", "request", "response"] = "all"
    inference_service: str | None = Field(
        None, description="ce-inferenceservicename (default: the service's name; a tag route "
        "such as latest-NAME logs under NAME)")
    namespace: str = Field("default", description="ce-namespace of the events")
    component: str = Field("predictor", description="ce-component of the events")
    max_payload_bytes: int = Field(
        1 << 20, ge=0, description="Bodies larger than this are logged without data (their size "
        "in the omitteddatasize extension), so a huge payload is never copied or queued")
    metadata_headers: list[str] = Field(
        default_factory=list, description="Request headers (REST) or metadata keys (gRPC) "
        "copied into the ce-metadata extension as JSON, as KServe's metadataHeaders")

    @field_validator("url")
    @classmethod
    def _sink(cls, url: str) -> str:
        if url.startswith(("http://", "https://")):
            if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
            return url
        path = url[len("file://"):] if url.startswith("file://") else url
        if not path.startswith("/") or not path.endswith(".jsonl"):
            # the router appends to this file: never to a path that is not a log of its own
            raise ValueError(f"{url!r}: a file sink is an absolute path ending in .jsonl "
                             "(file:///var/log/turnout/payloads.jsonl), or use http(s)://")
        return url

    @field_validator("metadata_headers")
    @classmethod
    def _lower_headers(cls, names: list[str]) -> list[str]:
        return [n.lower() for n in names]


class ServiceAuth(_Model):
    """Who may call a service through the router, once the router has authenticated the
    caller (docs/security.md); the router refuses routes with this block when it has no
    authentication configured."""

    principals: list[str] = Field(min_length=1, description="API key names or JWT subjects "
                                  "admitted; any other credential gets 403 / PERMISSION_DENIED")


class Service(_Model):
    name: str = Field(pattern=NAME)
    variants: list[Variant] = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    sticky: Sticky | None = None
    mirror: list[Mirror] = Field(default_factory=list)
    upstream: Upstream | None = Field(None, description="Overrides the file's top-level upstream")
    auth: ServiceAuth | None = Field(None, description="Only these principals may call it")
    logger: PayloadLog | None = Field(None, description="Log requests and responses as "
                                      "CloudEvents (KServe's predictor.logger)")

    @field_validator("mirror", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _references(self) -> Service:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat in service {self.name!r}: {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError(f"service {self.name!r}: variant weights must add up to more than 0")
        for rule in self.rules:
            if rule.variant not in names:
                raise ValueError(f"rule names unknown variant {rule.variant!r} (have {names})")
        for mirror in self.mirror:
            if mirror.variant not in names:
                raise ValueError(f"mirror names unknown variant {mirror.variant!r} (have {names})")
        return self


Dependency = Literal["Hard", "Soft"]


class Step(_Model):
    """One step of a graph node: call a service or another node (KServe's InferenceStep)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str | None = Field(None, alias="stepName")
    service: str | None = Field(None, alias="serviceName")
    node: str | None = Field(None, alias="nodeName")
    data: Literal["$request", "$response"] = "$request"
    condition: str | None = None
    weight: float | None = Field(None, ge=0)
    dependency: Dependency = "Soft"
    timeout_seconds: float | None = Field(None, gt=0)

    @field_validator("condition")
    @classmethod
    def _parses(cls, condition: str | None) -> str | None:
        if condition is not None:
            validate_condition(condition)
        return condition

    @model_validator(mode="after")
    def _one_target(self) -> Step:
        if (self.service is None) == (self.node is None):
            raise ValueError("a step needs exactly one of serviceName or nodeName")
        if self.name is None:
            object.__setattr__(self, "name", self.service or self.node)
        return self


class Node(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    router_type: Literal["Sequence", "Switch", "Ensemble", "Splitter"] = Field(alias="routerType")
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> Node:
        if self.router_type == "Splitter":
            if any(s.weight is None for s in self.steps) or sum(s.weight or 0 for s in self.steps) <= 0:
                raise ValueError("every Splitter step needs a weight, adding up to more than 0")
        if self.router_type == "Switch" and any(s.condition is None for s in self.steps[:-1]):
            raise ValueError("every Switch step but the last needs a condition")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {names}")
        return self


class Graph(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str = Field(pattern=NAME)
    nodes: dict[str, Node]
    timeout_seconds: float = Field(60.0, gt=0, description="Whole graph, every step included")

    @model_validator(mode="after")
    def _root(self) -> Graph:
        if "root" not in self.nodes:
            raise ValueError(f"graph {self.name!r} needs a node named 'root'")
        for node_name, node in self.nodes.items():
            for step in node.steps:
                if step.node is not None and step.node not in self.nodes:
                    raise ValueError(f"node {node_name!r} step {step.name!r} names unknown node "
                                     f"{step.node!r}")
        _check_acyclic(self)
        return self


def _check_acyclic(graph: Graph) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ValueError(f"graph {graph.name!r} has a cycle through node {name!r}")
        visiting.add(name)
        for step in graph.nodes[name].steps:
            if step.node is not None:
                visit(step.node)
        visiting.discard(name)
        done.add(name)

    for name in graph.nodes:
        visit(name)


class RouterConfig(_Model):
    """The whole routes file."""

    upstream: Upstream = Upstream()
    services: list[Service] = Field(default_factory=list)
    graphs: list[Graph] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> RouterConfig:
        services = [s.name for s in self.services]
        if len(set(services)) != len(services):
            raise ValueError(f"service names repeat: {services}")
        graphs = [g.name for g in self.graphs]
        clash = set(services) & set(graphs)
        if len(set(graphs)) != len(graphs) or clash:
            raise ValueError(f"graph names must be unique and differ from services: {graphs}")
        for graph in self.graphs:
            for node_name, node in graph.nodes.items():
                for step in node.steps:
                    if step.service is not None and step.service not in services:
                        raise ValueError(f"graph {graph.name!r} node {node_name!r} names unknown "
                                         f"service {step.service!r}")
        for i, service in enumerate(self.services):
            if self.upstream_for(service).hold_seconds > 0:
                continue
            for j, variant in enumerate(service.variants):
                if variant.empty:
                    raise ValueError(
                        f"services.{i}.variants.{j}: variant {variant.name!r} of service "
                        f"{service.name!r} needs at least one http or grpc endpoint; a variant "
                        "without endpoints is allowed only where the service holds requests "
                        "(upstream.hold_seconds > 0)")
        return self

    def upstream_for(self, service: Service) -> Upstream:
        return service.upstream or self.upstream


ConfigDoc = Annotated[dict[str, Any], "a parsed YAML or JSON routes document"]


def parse_config(doc: ConfigDoc | None, *, source: str = "config") -> RouterConfig:
    """Validate a parsed document; :class:`ConfigError` lists each problem as ``where: what``."""
    try:
        return RouterConfig.model_validate(doc or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(f"{source}: invalid routes:\n" + "\n".join(lines)) from None


def load_config_text(text: str | bytes, *, source: str = "config") -> RouterConfig:
    try:
        doc = yaml.safe_load(text)  # JSON is YAML too, so the admin API may send either
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with 'services'")
    return parse_config(doc, source=source)


def load_config(path: Path) -> RouterConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return load_config_text(text, source=str(path))
