"""Payload log sinks: a bounded queue per URL, its consumer, and the HTTP and JSON-lines writers.

The data path's only call is :meth:`Sink.offer`: append a small :class:`Item` or drop it. A
consumer task per sink, on the router's event loop, is woken once per burst, builds the
CloudEvents (:func:`event_of`) and sends them: :data:`HTTP_WORKERS` POSTs in flight per URL
(binary content mode, as KServe's agent), or batches of JSON lines written by a thread. A
failed send opens the sink's breaker (:data:`BACKOFF` doubling to :data:`MAX_BACKOFF`); while it
is open, queued events are dropped and counted, never retried. See router/payload_log.py.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
from cloudevents.conversion import to_binary, to_json
from cloudevents.http import CloudEvent

from serving.spec.routes import PayloadLog

log = logging.getLogger("turnout.router.payloads")

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
Count = Callable[[list["Item"], Outcome], None]


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


class Sink:
    """One URL's queue, its consumer task, its POSTs in flight and its breaker."""

    def __init__(self, url: str, count: Count, max_events: int, max_bytes: int,
                 timeout: float, backoff: float) -> None:
        self.url, self.count = url, count
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
        self._file = FileSink(url) if not url.startswith(("http://", "https://")) else None
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
            self.count([item], "dropped")
            return
        if self.sleeping:
            self.sleeping = False
            if threadsafe:
                self._loop.call_soon_threadsafe(self.wake.set)
            else:
                self.wake.set()

    def _take(self, limit: int) -> list[Item]:
        items: list[Item] = []
        with self._lock:
            while self.queue and len(items) < limit:
                item = self.queue.popleft()
                self.queued_bytes -= len(item.data) if item.data is not None else 0
                items.append(item)
        return items

    def _drop_all(self) -> None:
        self.count(self._take(len(self.queue)), "dropped")

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
        self.count(items, "sent" if ok else "failed")
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
            async with self._session.post(self.url, data=body or b"", headers=headers,
                                          allow_redirects=False) as resp:
                await resp.content.read(65536)  # a sink's answer is not ours to hold whole
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


class FileSink:
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
