"""OpenTelemetry tracing for the router and the model server, loaded only when switched on.

Off by default. :func:`setup` turns it on from flags (``--trace-endpoint``,
``--trace-sample-ratio``) or OpenTelemetry's own variables (``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_SERVICE_NAME``):
the SDK, the OTLP/HTTP exporter behind a batch processor, parent-based ratio sampling and W3C
trace context. Hot paths check the module flag :data:`ON` once and take their untraced code
when it is false, so with tracing off nothing of OpenTelemetry is imported and no span object is
made (loadtests/tracing_cost.py measures both).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
from collections.abc import Iterable, Mapping, MutableSequence
from typing import Any

from pydantic import BaseModel, Field

log = logging.getLogger("turnout.tracing")

ON = False  # read by hot paths: True only after setup() configured an exporter
_tracer: Any = None
_propagator: Any = None
_provider: Any = None
_api: Any = None  # opentelemetry.trace, once set up
_kinds: dict[str, Any] = {}
_context_api: Any = None
# a traceparent is 55 characters; tracestate at most 32 members of 256: anything far larger
# is hostile and ignored before the propagator sees it
MAX_HEADER = 8192
KEYS = ("traceparent", "tracestate")


class TracingFields(BaseModel):
    """The two tracing settings of ``turnout serve`` and ``turnout router``."""

    trace_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector (http://host:4318): tracing on; "
        "OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT does the same")
    trace_sample_ratio: float | None = Field(
        None, ge=0.0, le=1.0, description="Share of new traces sampled (parent-based: a "
        "client's sampled flag is followed); default OTEL_TRACES_SAMPLER[_ARG], else 1.0")


def add_trace_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace-endpoint", help="OTLP/HTTP collector URL: OpenTelemetry "
                        "tracing on (docs/observability.md)")
    parser.add_argument("--trace-sample-ratio", type=float, help="share of new traces "
                        "sampled, 0..1 (parent-based)")


def wanted(endpoint: str | None, env: Mapping[str, str]) -> bool:
    """Whether tracing is on: a flag endpoint, or OpenTelemetry's variables asking for OTLP."""
    if endpoint:
        return True
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter not in ("none", "")
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service: str, *, endpoint: str | None = None, ratio: float | None = None,
          env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on for this process if asked to; returns :data:`ON`."""
    global ON, _tracer, _propagator, _provider
    env = os.environ if env is None else env
    if ON or not wanted(endpoint, env):
        return ON
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio is not None else None
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service})
    _provider = TracerProvider(sampler=sampler, resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=traces_url(endpoint)) if endpoint else OTLPSpanExporter()))
    _tracer = _provider.get_tracer("turnout")
    _propagator = TraceContextTextMapPropagator()
    global _api
    from opentelemetry import trace

    _api = trace
    from opentelemetry import context as context_api

    global _context_api
    _context_api = context_api
    _kinds.update({k.name.lower(): k for k in trace.SpanKind})
    atexit.register(shutdown)
    ON = True
    log.info("tracing on: OTLP/HTTP to %s, sampler %s", traces_url(endpoint) if endpoint
             else "the OTEL_EXPORTER_OTLP_* endpoint", _provider.sampler.get_description())
    return True


def trace_variables(endpoint: str | None, ratio: float | None) -> dict[str, str]:
    """``turnout up``'s tracing flags as the settings variables of the router
    (``TURNOUT_ROUTER_``) and of the model servers (``TURNOUT_``) it starts."""
    out = {}
    for prefix in ("TURNOUT_", "TURNOUT_ROUTER_"):
        if endpoint:
            out[prefix + "TRACE_ENDPOINT"] = endpoint
        if ratio is not None:
            out[prefix + "TRACE_SAMPLE_RATIO"] = str(ratio)
    return out


def traces_url(endpoint: str | None) -> str | None:
    """``--trace-endpoint`` as OTEL_EXPORTER_OTLP_ENDPOINT reads: a bare collector address gets
    the ``/v1/traces`` path; an address with a path is used as it is."""
    if not endpoint:
        return None
    scheme, sep, rest = endpoint.partition("://")
    if sep and "/" not in rest.rstrip("/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def shutdown() -> None:
    """Export what is buffered (at exit, and when a server stops)."""
    if _provider is not None:
        _provider.shutdown()


# -- propagation: W3C traceparent / tracestate ------------------------------------------------

def _get(carrier: dict[str, str], key: str) -> list[str] | None:
    value = carrier.get(key)
    return None if value is None else [value]


class _Getter:
    """The propagator's getter over the dict :func:`_carrier` builds."""

    get = staticmethod(_get)

    @staticmethod
    def keys(carrier: dict[str, str]) -> list[str]:
        return list(carrier)


def _carrier(headers: Iterable[tuple[Any, Any]]) -> dict[str, str]:
    """traceparent/tracestate of raw (bytes) or decoded headers or gRPC metadata, bounded."""
    found: dict[str, str] = {}
    for key, value in headers:
        name = key.decode("latin-1").lower() if isinstance(key, bytes) else str(key).lower()
        if name in KEYS and len(value) <= MAX_HEADER:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


def extract(headers: Iterable[tuple[Any, Any]]) -> Any:
    """The context a client's ``traceparent`` continues (an empty one when it sent none, or one
    the propagator refuses: malformed, wrong version, all-zero ids)."""
    carrier = _carrier(headers)
    if not carrier:
        return None
    return _propagator.extract(carrier, getter=_Getter)


def inject(headers: MutableSequence[tuple[str, str]]) -> None:
    """Replace any trace headers in ``headers`` with the current span's."""
    headers[:] = [(k, v) for k, v in headers if k.lower() not in KEYS]
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    headers.extend(carrier.items())


# -- spans ------------------------------------------------------------------------------------

class _Unsampled:
    """The block of a child of an unsampled span: no span is made (the sampler would drop it
    anyway, parent-based), the unsampled parent stays current and is what gets propagated."""

    __slots__ = ()

    def __enter__(self) -> Any:
        return _api.get_current_span()

    def __exit__(self, *exc: object) -> None:
        return None


_UNSAMPLED = _Unsampled()


def span(name: str, *, context: Any = None, kind: str = "internal",
         attributes: Mapping[str, Any] | None = None, links: Iterable[Any] = (),
         start_time: int | None = None) -> Any:
    """A span made current for the block (a context manager); ``context``: its parent (default:
    the current span); ``kind``: server, client or internal. Only called when :data:`ON`."""
    if context is None:
        # The sampled flag, not is_recording(): a parent that has already ended (a shadow
        # copy's route span, when the primary answered before the copy's task first ran) is
        # no longer recording, yet its trace is sampled and the child belongs in it.
        parent = _api.get_current_span().get_span_context()
        if parent.is_valid and not parent.trace_flags.sampled:
            return _UNSAMPLED
    return _tracer.start_as_current_span(name, context=context, kind=_kinds[kind],
                                         attributes=attributes, links=list(links) or None,
                                         start_time=start_time)


def record(name: str, *, context: Any, start_time: int, end_time: int,
           attributes: Mapping[str, Any] | None = None) -> Any:
    """A span that already happened (a queue wait): its context, to link to."""
    made = _tracer.start_span(name, context=context, attributes=attributes,
                              start_time=start_time)
    made.end(end_time=end_time)
    return made.get_span_context()


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (``turnout.variant`` for ``turnout_variant``)."""
    current = _api.get_current_span()
    if not current.is_recording():
        return
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(_ATTRIBUTE_NAMES.get(key, key), value)


def failed(status_code: int | str) -> None:
    """Mark the current span as an error (a 5xx, a gRPC code other than OK)."""
    from opentelemetry.trace import Status, StatusCode

    _api.get_current_span().set_status(Status(StatusCode.ERROR, str(status_code)))


def current_context() -> Any:
    return _context_api.get_current()


def span_context_of(context: Any) -> Any:
    """The span context of the span current in ``context`` (a request's, to link to)."""
    return _api.get_current_span(context).get_span_context()


def link(span_context: Any) -> Any:
    from opentelemetry.trace import Link

    return Link(span_context)


def now_ns() -> int:
    import time

    return time.time_ns()


# keyword-friendly names for annotate(): OpenTelemetry's semantic conventions where they exist
_ATTRIBUTE_NAMES = {
    "method": "http.request.method",
    "status_code": "http.response.status_code",
    "rpc_system": "rpc.system",
    "rpc_method": "rpc.method",
    "grpc_status": "rpc.grpc.status_code",
    "service": "turnout.service",
    "variant": "turnout.variant",
    "revision": "turnout.revision",
    "rule": "turnout.rule",
    "model": "turnout.model.name",
    "version": "turnout.model.version",
    "attempt": "turnout.attempt",
    "outcome": "turnout.outcome",
    "endpoint": "server.address",
    "shadow": "turnout.shadow",
    "step": "turnout.graph.step",
    "batch_size": "turnout.batch.size",
    "request_id": "turnout.request_id",
}
