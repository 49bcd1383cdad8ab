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
path) gets one structured-mode JSON event per line, rotated at :data:`FILE_MAX_BYTES`.

Concurrency design: the data path never waits. An edge appends one small tuple to its sink's
deque (bounded in events and in bytes; over either, the event is dropped and counted) and, when
the sink's workers sleep, wakes them; no event object is built, nothing is awaited. The gRPC
edge's threads do the same (``deque.append`` is atomic; the wake-up goes through
``call_soon_threadsafe`` only when a worker sleeps). Each sink has its own workers on the
router's event loop, so a slow sink never holds another's events: :data:`HTTP_WORKERS` POSTs
in flight per URL, each with :data:`SEND_TIMEOUT` seconds; a file sink writes its batches in
a thread. A failure (refused, timeout, non-2xx) opens the sink's breaker for a backoff that
doubles up to :data:`MAX_BACKOFF`; events meanwhile are dropped and counted, not retried, so a
dead sink costs neither memory nor connection attempts. Every event is counted exactly once in
``turnout_router_payload_events_total{service,outcome}`` (sent, failed, dropped).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from cloudevents.conversion import to_binary, to_json
from cloudevents.http import CloudEvent
from prometheus_client import CollectorRegistry, Counter

from router.disagreements import Disagreement
from serving.spec.routes import PayloadLog, RouterConfig

log = logging.getLogger("turnout.router.payloads")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
DISAGREEMENT_TYPE = "org.turnout.mirror.disagreement"
GRPC_REQUEST_TYPE = "application/x-protobuf; messageType=inference.ModelInferRequest"
GRPC_RESPONSE_TYPE = "application/x-protobuf; messageType=inference.ModelInferResponse"

MAX_QUEUED_EVENTS = 10_000       # per sink
MAX_QUEUED_BYTES = 64 << 20      # per sink: bodies waiting to be sent
HTTP_WORKERS = 4                 # POSTs in flight per HTTP sink
SEND_TIMEOUT = 2.0               # seconds per POST, connect included
BACKOFF = 0.5                    # first breaker opening, seconds; doubles per failure
MAX_BACKOFF = 30.0
FILE_MAX_BYTES = 64 << 20        # a JSON-lines file is rotated past this size
FILE_BACKUPS = 3                 # payloads.jsonl.1 .. .3 kept
BATCH_DELAY = 0.005              # a woken consumer waits this long for the rest of a burst

Outcome = Literal["sent", "failed", "dropped"]


@dataclass(slots=True)
class Item:
    """One event to send, as cheap to make as possible: the edge builds only this."""

    spec: PayloadLog
    service: str
    variant: str
    revision: str | None
    protocol: str
    type: str
    id: str
    content_type: str | None
    data: bytes | None
    size: int                      # the body's size (data may be omitted over the cap)
    metadata: str | None           # JSON of the metadata headers asked for
    time: float


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
        self._sinks: dict[str, _Sink] = {}
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
            sink = _Sink(url, self, *self._limits)
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
                        record.origin.protocol, DISAGREEMENT_TYPE, uuid.uuid4().hex,
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


def event_of(item: Item) -> CloudEvent:
    """The CloudEvent for ``item`` (built by a sink's worker, never on the data path)."""
    attributes: dict[str, Any] = {
        "id": item.id, "type": item.type,
        "source": f"turnout/{item.spec.namespace}/{item.spec.inference_service or item.service}"
                  f"/{item.revision or item.variant}",
        "time": datetime.datetime.fromtimestamp(item.time, datetime.UTC).isoformat(),
        "inferenceservicename": item.spec.inference_service or item.service,
        "namespace": item.spec.namespace, "component": item.spec.component,
        "endpoint": item.variant, "protocol": item.protocol,
    }
    if item.revision:
        attributes["revision"] = item.revision
    if item.metadata is not None:
        attributes["metadata"] = item.metadata
    if item.data is None:
        # over max_payload_bytes: sent without data (a string: headers carry strings only)
        attributes["omitteddatasize"] = str(item.size)
    elif item.content_type:
        attributes["datacontenttype"] = item.content_type
    return CloudEvent(attributes, item.data)


class _Sink:
    """One URL's queue, its consumer task, its POSTs in flight and its breaker."""

    def __init__(self, url: str, owner: PayloadLogger, max_events: int, max_bytes: int,
                 timeout: float, backoff: float) -> None:
        self.url, self.owner = url, owner
        self.max_events, self.max_bytes = max_events, max_bytes
        self.timeout, self.backoff = timeout, backoff
        self.queue: collections.deque[Item] = collections.deque()
        self.queued_bytes = 0
        self._lock = threading.Lock()
        self.in_flight = 0
        self.wake = asyncio.Event()
        self.sleeping = False
        self.down_until = 0.0
        self._failures = 0
        self._consumer: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._file = _FileSink(url) if not url.startswith(("http://", "https://")) else None
        self._session: aiohttp.ClientSession | None = None

    @property
    def busy(self) -> bool:
        return bool(self.queue) or self.in_flight > 0

    def start(self) -> None:
        self._consumer = asyncio.create_task(self._consume())

    def stop(self) -> None:
        for task in [self._consumer, *self._sends]:
            if task is not None:
                task.cancel()
        self._drop_all()

    async def stopped(self) -> None:
        tasks = [t for t in (self._consumer, *self._sends) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def offer(self, item: Item, threadsafe: bool) -> None:
        """Queue ``item`` or drop it; the data path's only call. Appends before it looks at
        ``sleeping``, and the consumer sets ``sleeping`` before it looks at the queue, so one
        of the two always sees the other (a gRPC thread and the loop alike)."""
        size = len(item.data) if item.data is not None else 0
        with self._lock:  # gRPC threads and the loop: the byte count stays exact
            full = len(self.queue) >= self.max_events or self.queued_bytes + size > self.max_bytes
            if not full:
                self.queued_bytes += size
                self.queue.append(item)
        if full:
            self.owner.count(item.service, "dropped")
            return
        if self.sleeping:
            self.sleeping = False
            if threadsafe:
                self._loop.call_soon_threadsafe(self.wake.set)
            else:
                self.wake.set()

    def _take(self, limit: int) -> list[Item]:
        items = []
        with self._lock:
            while self.queue and len(items) < limit:
                item = self.queue.popleft()
                self.queued_bytes -= len(item.data) if item.data is not None else 0
                items.append(item)
        return items

    def _drop_all(self) -> None:
        self.owner.count_items(self._take(len(self.queue)), "dropped")

    async def _consume(self) -> None:
        while True:
            if not self.queue:
                self.wake.clear()
                self.sleeping = True
                if not self.queue:
                    await self.wake.wait()
                self.sleeping = False
                # a burst gathers meanwhile: one wake-up per burst, not per request
                await asyncio.sleep(BATCH_DELAY)
                continue
            if time.monotonic() < self.down_until:  # the breaker is open: drop, never wait
                self._drop_all()
                continue
            if self._file is not None:
                await self._send(self._take(512))
                continue
            while len(self._sends) >= HTTP_WORKERS:
                self._slot_free.clear()
                await self._slot_free.wait()
            if not self.queue or time.monotonic() < self.down_until:
                continue
            task = asyncio.create_task(self._send(self._take(1)))
            self._sends.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._slot_free.set()

    async def _send(self, items: list[Item]) -> None:
        self.in_flight += len(items)
        try:
            ok = await (self._write(items) if self._file is not None else self._post(items[0]))
        except Exception:  # a bug here must cost events, never the consumer
            log.exception("payload sink %s: sending failed", self.url)
            ok = False
        finally:
            self.in_flight -= len(items)
        self.owner.count_items(items, "sent" if ok else "failed")
        if ok:
            self._failures = 0
        else:
            self._failures += 1
            pause = min(MAX_BACKOFF, self.backoff * 2 ** (self._failures - 1))
            self.down_until = time.monotonic() + pause

    async def _post(self, item: Item) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=HTTP_WORKERS))
        headers, body = to_binary(event_of(item))
        try:
            async with self._session.post(self.url, data=body or b"", headers=headers) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("payload sink %s: %s", self.url, exc)
            return False
        if not ok:
            log.debug("payload sink %s answered %d", self.url, resp.status)
        return ok

    async def _write(self, items: list[Item]) -> bool:
        assert self._file is not None
        lines = b"".join(to_json(event_of(item)) + b"\n" for item in items)
        try:
            await asyncio.to_thread(self._file.append, lines)
        except OSError as exc:
            log.warning("payload log %s: %s", self._file.path, exc.strerror)
            return False
        return True


class _FileSink:
    """Appends JSON lines; past :data:`FILE_MAX_BYTES` the file becomes ``.1`` (``.1`` becomes
    ``.2``...), keeping :data:`FILE_BACKUPS`. Only the one worker thread of its sink writes."""

    def __init__(self, url: str) -> None:
        self.path = Path(url[len("file://"):] if url.startswith("file://") else url)

    def append(self, lines: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size + len(lines) > FILE_MAX_BYTES:
                self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        for n in range(FILE_BACKUPS - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def listener(logger: PayloadLogger, table: Callable[[], Any]) -> Callable[[Disagreement], None]:
    """Sends each mirror disagreement of a service that has a logger (Shadower's ring)."""
    def send(record: Disagreement) -> None:
        service = table().services.get(record.service)
        spec = service.spec.logger if service is not None else None
        if spec is not None:
            logger.disagreement(spec, record)
    return send
