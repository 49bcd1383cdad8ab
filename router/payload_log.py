"""Payload logging: a service's requests and responses as CloudEvents (KServe's ``logger``).

What is sent mirrors KServe's agent: an ``org.kubeflow.serving.inference.request`` event
for every inference request (mode ``all`` or ``request``) and an
``org.kubeflow.serving.inference.response`` event for every answer with status 200 / OK (mode
``all`` or ``response``); both carry the same ``id`` (the request's ``ce-id`` header, else its
``x-request-id``, else one minted), the body bytes exactly as the client sent or got them as
``data``, and the extensions ``inferenceservicename``, ``namespace``, ``component`` and
``endpoint`` (the variant: ``stable`` / ``canary`` under ``turnout up``, KServe's ``default`` /
``canary``), plus Turnout's ``revision`` and ``protocol``. gRPC bodies are the raw protobuf
``ModelInferRequest`` / ``ModelInferResponse`` bytes, with ``datacontenttype``
``application/x-protobuf; messageType=inference.ModelInferRequest`` (or ...Response): the router
never decodes tensors on the request path, and the bytes are what the client exchanged.
Mirror disagreements (router/disagreements.py) go out as ``org.turnout.mirror.disagreement``.

Sinks: ``http(s)://`` URLs get one POST per event in binary content mode (``ce-*`` headers,
the data as the body), as KServe's agent sends; ``file:///path.jsonl`` (or a plain absolute
path) gets one structured-mode JSON event per line, rotated at 64 MiB.

Concurrency design: the data path never waits. An edge builds one small :class:`Item`
(references to the body bytes, no copy, no CloudEvent) and offers it to its sink
(router/payload_sinks.py): appended to a queue bounded in events and in bytes, or dropped and
counted; a sleeping consumer is woken (from a gRPC thread through ``call_soon_threadsafe``).
Each URL has its own sink and consumer on the router's event loop, so a slow sink never holds
another's events; a failing sink's breaker drops events instead of retrying them, so a dead
sink costs neither memory nor connection attempts. Every event is counted exactly once in
``turnout_router_payload_events_total{service,outcome}`` (sent, failed, dropped).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from router.disagreements import Disagreement
from router.payload_sinks import (
    BACKOFF,
    MAX_QUEUED_BYTES,
    MAX_QUEUED_EVENTS,
    SEND_TIMEOUT,
    Item,
    Outcome,
    Sink,
)
from serving.spec.routes import PayloadLog, RouterConfig

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
DISAGREEMENT_TYPE = "org.turnout.mirror.disagreement"
GRPC_REQUEST_TYPE = "application/x-protobuf; messageType=inference.ModelInferRequest"
GRPC_RESPONSE_TYPE = "application/x-protobuf; messageType=inference.ModelInferResponse"


class PayloadLogger:
    """The router's sinks, one per distinct URL in the routes, and their metric."""

    def __init__(self, registry: CollectorRegistry, *, max_events: int = MAX_QUEUED_EVENTS,
                 max_bytes: int = MAX_QUEUED_BYTES, timeout: float = SEND_TIMEOUT,
                 backoff: float = BACKOFF) -> None:
        self.events = Counter("turnout_router_payload_events_total",
                              "Payload log events (CloudEvents) by outcome: sent, failed (the "
                              "sink refused, failed or timed out) or dropped (queue full, sink "
                              "down: never retried)", ["service", "outcome"], registry=registry)
        self._limits = (max_events, max_bytes, timeout, backoff)
        self._sinks: dict[str, Sink] = {}
        self._closing: set[asyncio.Future[None]] = set()

    # -- configuration (event loop) -----------------------------------------------------------

    def configure(self, config: RouterConfig) -> None:
        """Start a sink for each URL the routes name; stop those no longer named (what they
        still hold is dropped and counted). Called before the new table goes live."""
        wanted = {s.logger.url for s in config.services if s.logger is not None}
        for url in [u for u in self._sinks if u not in wanted]:
            sink = self._sinks.pop(url)
            sink.stop()
            closing = asyncio.ensure_future(sink.stopped())  # its session closes off the path
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        for url in wanted - set(self._sinks):
            sink = Sink(url, self.count_items, *self._limits)
            self._sinks[url] = sink
            sink.start()

    async def close(self, grace: float = 1.0) -> None:
        """Send what is queued for up to ``grace`` seconds, then drop (and count) the rest."""
        await self.drained(grace)
        sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.stop()
        await asyncio.gather(*(s.stopped() for s in sinks), *self._closing,
                             return_exceptions=True)

    # -- the data path: never waits -----------------------------------------------------------

    def offer(self, item: Item, *, threadsafe: bool = False) -> None:
        sink = self._sinks.get(item.spec.url)
        if sink is None:
            self.count(item.service, "dropped")
            return
        sink.offer(item, threadsafe)

    def rest(self, spec: PayloadLog, *, service: str, variant: str, revision: str | None,
             protocol: str, headers: Iterable[tuple[bytes, bytes]], rid: bytes,
             body: bytes) -> Item:
        """Log a REST request (when the mode says so) and return what its response needs.
        ``rid``: the edge's request id (the client's ``x-request-id``, else one it minted)."""
        ce_id = content_type = None
        wanted = spec.metadata_headers
        metadata: dict[str, list[str]] | None = {} if wanted else None
        for key, value in headers:
            name = key.lower()
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"ce-id":
                ce_id = value[:128].decode("latin-1")
            if metadata is not None:
                text = name.decode("latin-1")
                if text in wanted:
                    metadata.setdefault(text, []).append(value.decode("latin-1"))
        item = self._item(spec, service, variant, revision, protocol,
                          ce_id or rid.decode("latin-1"), content_type or "application/json",
                          body, metadata)
        if spec.mode != "response":
            self.offer(item)
        return item

    def rest_response(self, item: Item, body: bytes,
                      headers: Iterable[tuple[str, str]]) -> None:
        if item.spec.mode == "request":
            return
        content_type = next((v for k, v in headers if k.lower() == "content-type"),
                            "application/json")
        self.offer(self._answer(item, content_type, body))

    def grpc(self, spec: PayloadLog, *, service: str, variant: str, revision: str | None,
             metadata: list[tuple[str, Any]], body: bytes) -> Item:
        """Log a gRPC ModelInfer request from an edge thread."""
        ce_id = rid = None
        wanted = spec.metadata_headers
        kept: dict[str, list[str]] | None = {} if wanted else None
        for key, value in metadata:
            if not isinstance(value, str):
                continue
            if key == "ce-id":
                ce_id = value[:128]
            elif key == "x-request-id":
                rid = value[:128]
            if kept is not None and key in wanted:
                kept.setdefault(key, []).append(value)
        item = self._item(spec, service, variant, revision, "grpc", ce_id or rid,
                          GRPC_REQUEST_TYPE, body, kept)
        if spec.mode != "response":
            self.offer(item, threadsafe=True)
        return item

    def grpc_response(self, item: Item, body: bytes) -> None:
        if item.spec.mode != "request":
            self.offer(self._answer(item, GRPC_RESPONSE_TYPE, body), threadsafe=True)

    def disagreement(self, spec: PayloadLog, record: Disagreement) -> None:
        """A mirror disagreement as an event (shadow task, on the loop)."""
        data = orjson.dumps(record.to_json())
        self.offer(Item(spec, record.service, record.shadow, record.shadow_revision,
                        record.protocol, DISAGREEMENT_TYPE, uuid.uuid4().hex,
                        "application/json", data, len(data), None, record.time))

    def _item(self, spec: PayloadLog, service: str, variant: str, revision: str | None,
              protocol: str, ce_id: str | None, content_type: str, body: bytes,
              metadata: dict[str, list[str]] | None) -> Item:
        size = len(body)
        return Item(spec, service, variant, revision, protocol, REQUEST_TYPE,
                    ce_id or uuid.uuid4().hex, content_type,
                    body if size <= spec.max_payload_bytes else None, size,
                    None if metadata is None else orjson.dumps(metadata).decode(), time.time())

    @staticmethod
    def _answer(request: Item, content_type: str, body: bytes) -> Item:
        size = len(body)
        return Item(request.spec, request.service, request.variant, request.revision,
                    request.protocol, RESPONSE_TYPE, request.id, content_type,
                    body if size <= request.spec.max_payload_bytes else None, size,
                    request.metadata, time.time())

    def count(self, service: str, outcome: Outcome, n: int = 1) -> None:
        self.events.labels(service, outcome).inc(n)

    def count_items(self, items: list[Item], outcome: Outcome) -> None:
        for service, n in collections.Counter(i.service for i in items).items():
            self.count(service, outcome, n)

    async def drained(self, timeout: float = 10.0) -> bool:
        """Whether every sink emptied its queue within ``timeout`` (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while any(s.busy for s in self._sinks.values()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True


def listener(logger: PayloadLogger, table: Callable[[], Any]) -> Callable[[Disagreement], None]:
    """Sends each mirror disagreement of a service that has a logger (Shadower's ring)."""
    def send(record: Disagreement) -> None:
        service = table().services.get(record.service)
        spec = service.spec.logger if service is not None else None
        if spec is not None:
            logger.disagreement(spec, record)
    return send
