"""uvicorn's httptools protocol with bounded request heads, read timeouts and JSON refusals.

httptools gathers a header that arrives in pieces by concatenating them, so a client sending one
enormous header costs quadratic time on the event loop: a 64 MiB header took 18 s to parse while
every other client waited. :class:`BoundedHttpToolsProtocol` never lets more than
``max_header_bytes`` of a request's head (request line and headers) reach the parser: past it
the answer is 431 and the connection closes. Body bytes are not counted — data is fed in slices
while a head is incomplete, so a head followed by a large body in one read is not mistaken for a
large head. More than ``max_header_count`` headers is 431 too, and a request target (URL) over
``max_url_bytes`` is 414, each refused as soon as it is known (a flood of tiny headers would
otherwise cost thousands of callbacks on the event loop).

Time limits (slowloris): a request head must arrive whole within ``header_timeout`` seconds of
its first byte, and a body must keep arriving at ``body_min_rate`` bytes per second, judged
every ``body_timeout`` seconds (time while the server itself stopped reading does not count);
otherwise the answer is 408 and the connection closes. A connection that never sends a byte is
closed after uvicorn's keep-alive timeout, as an idle keep-alive connection is. The hot path
pays almost nothing for this: no timer per request, but one periodic sweep per event loop
(:class:`_Watchdog`) over the connections whose last read left a head or body incomplete, or
that wait idle for their next request (the keep-alive timeout, which uvicorn would arm as a
new timer after every response) — a set insertion and removal (~0.1 µs) where a
``call_later`` and its cancel cost ~2 µs.

Every refusal is ``{"error": ...}`` JSON with ``Connection: close`` (400, 408, 414, 431), or a
clean close when there is nobody to answer: nothing was sent, or an earlier response on the
connection is still being written.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, ClassVar, cast

import orjson
from mypy_extensions import mypyc_attr

from serving.transport.coalesce import CoalescingHttpToolsProtocol
from serving.transport.limits import MAX_HEADER_BYTES, HttpLimits

__all__ = ["MAX_HEADER_BYTES", "BoundedHttpToolsProtocol", "HttpLimits", "limited"]


class _Refused(Exception):
    """Raised inside a parser callback: httptools stops and ``send_400_response`` answers
    with the refusal stored on the protocol."""


# What a watched connection is waiting for: the rest of a head, more body, or (idle between
# requests) its next request within the keep-alive timeout.
_HEAD, _BODY, _IDLE = 1, 2, 3


class _Watchdog:
    """One periodic sweep per event loop over the connections whose head or body is
    incomplete; each holds its own deadline. Runs only while some connection is watched."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.watched: set[BoundedHttpToolsProtocol] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, protocol: BoundedHttpToolsProtocol) -> None:
        self.watched.add(protocol)
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = self.loop.time()
        for protocol in [p for p in self.watched if p._deadline <= now]:
            self.watched.discard(protocol)
            protocol._timed_out()  # may watch again
        if self.watched:
            self._handle = self.loop.call_later(self.interval, self._sweep)


_WATCHDOGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = \
    weakref.WeakKeyDictionary()


def _watchdog(loop: asyncio.AbstractEventLoop, shortest: float) -> _Watchdog:
    """The loop's watchdog, sweeping often enough for a timeout of ``shortest`` seconds."""
    interval = min(max(shortest / 8, 0.05), 1.0)
    dog = _WATCHDOGS.get(loop)
    if dog is None:
        dog = _WATCHDOGS[loop] = _Watchdog(loop, interval)
    elif interval < dog.interval:
        dog.interval = interval
    return dog


@mypyc_attr(allow_interpreted_subclasses=True)  # servers bind settings by subclassing
class BoundedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    # Set by subclassing (limited()): class variables, because a compiled class would keep
    # its own defaults in instance slots and never see a subclass's values.
    max_header_bytes: ClassVar[int] = HttpLimits.max_header_bytes
    max_header_count: ClassVar[int] = HttpLimits.max_header_count
    max_url_bytes: ClassVar[int] = HttpLimits.max_url_bytes
    header_timeout: ClassVar[float] = HttpLimits.header_timeout
    body_timeout: ClassVar[float] = HttpLimits.body_timeout
    body_min_rate: ClassVar[float] = HttpLimits.body_min_rate
    _head_bytes: int = 0          # bytes of the current request's head fed to the parser
    _in_head: bool = True         # not inside a request's body (between requests, or in a head)
    _head_begun: bool = False     # the parser is inside a request head that has not ended
    _watching: int = 0            # 0, or what the watchdog waits for (_HEAD, _BODY)
    _deadline: float = 0.0        # loop time at which the watched head or body times out
    _body_bytes: int = 0          # body bytes received since the request's head ended
    _body_mark: int = 0           # _body_bytes when the body's current window began
    _refusal: tuple[int, str] | None = None     # raised from a parser callback
    _deferred: tuple[int, str] | None = None    # written once earlier answers are out
    _keep_alive_s: float = 5.0    # uvicorn's keep-alive timeout, read once per connection
    _watchdog: _Watchdog

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watchdog = _watchdog(self.loop, min(self.header_timeout, self.body_timeout))
        # uvicorn types its keep-alive timeout as an int, but servers set fractions of a
        # second: read untyped (compiled code would refuse a float where an int is declared),
        # once, not after every answer
        self._keep_alive_s = float(cast(Any, self).timeout_keep_alive)
        # A connection that never sends a byte is closed as an idle keep-alive one is.
        self._watch(_IDLE, self._keep_alive_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._watching == _IDLE:
            self._unwatch()
        if not self._in_head:
            self._body_bytes += len(data)
            super().data_received(data)
        else:
            while True:
                room = self.max_header_bytes - self._head_bytes
                if len(data) <= room:
                    self._head_bytes += len(data)
                    super().data_received(data)
                    break
                self._head_bytes += room
                super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if not self._in_head:  # the head ended inside the slice: the rest is body
                    self._body_bytes += len(data) - room
                    super().data_received(data[room:])
                    break
                if self._head_bytes >= self.max_header_bytes:  # still the same head
                    self._refuse(431, f"request head over {self.max_header_bytes} bytes")
                    return
                data = data[room:]  # a request ended inside the slice, the next head began
        # A read that leaves a head or a body incomplete starts its clock (once); it replaces
        # the idle clock an answer given during this read started.
        watching = self._watching
        if watching != _HEAD and watching != _BODY:
            if self._in_head:
                if self._head_begun:
                    self._watch(_HEAD, self.header_timeout)
                elif not watching and self._idle():
                    # only blank lines between requests: as idle as sending nothing
                    self._watch(_HEAD, self._keep_alive_s)
            else:
                self._body_mark = self._body_bytes
                self._watch(_BODY, self.body_timeout)

    # Parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = self._head_begun = True
        self.begin_message()

    def begin_message(self) -> None:
        """uvicorn's start of a request, which builds its ASGI scope (the fast path defers
        that to requests it does not claim)."""
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self.url = self.url + url  # (uvicorn's attribute: mypyc cannot augment it in place)
        if len(self.url) > self.max_url_bytes:
            self._refusal = (414, f"request target over {self.max_url_bytes} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's own, plus the count: a flood of small headers is refused at the first one
        # too many, not after thousands of these calls (each ~1 µs of the event loop)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.max_header_count:
            self._refusal = (431, f"more than {self.max_header_count} request headers")
            raise _Refused

    def on_headers_complete(self) -> None:
        self.head_complete()
        upgrade = self.parser.should_upgrade()
        if upgrade:  # httptools stops at an upgrade: a body behind it would never be read
            for name, value in self.headers:
                if name == b"transfer-encoding" or (name == b"content-length"
                                                    and value.strip() != b"0"):
                    self._refusal = (400, "protocol upgrades are not supported on requests "
                                     "with a body (drop Connection: upgrade)")
                    raise _Refused
        super().on_headers_complete()
        if upgrade and self.cycle is not None:  # answered as plain HTTP/1.1, then closed:
            self.cycle.keep_alive = False       # nothing after an upgrade can be parsed
            self.flow.pause_reading()

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn's two warnings per upgrade request (Turnout serves no WebSocket): the
        request is answered as plain HTTP/1.1 instead."""

    def head_complete(self) -> None:
        """Subclasses that answer without calling ``on_headers_complete`` call this."""
        self._in_head = self._head_begun = False
        self._body_bytes = 0
        if self._watching:
            self._unwatch()

    def on_message_complete(self) -> None:
        self.message_complete()
        super().on_message_complete()

    def message_complete(self) -> None:
        """What follows is the next request's head (subclasses that answer without calling
        ``on_message_complete`` call this)."""
        self._in_head, self._head_bytes = True, 0
        if self._watching:
            self._unwatch()

    # Time limits --------------------------------------------------------------------------
    def _watch(self, what: int, seconds: float) -> None:
        if not self.transport.is_closing():
            self._watching = what
            self._deadline = self.loop.time() + seconds
            self._watchdog.watch(self)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = 0
            self._watchdog.watched.discard(self)

    def keep_alive(self) -> None:
        """An answer is complete and nothing else is under way: the keep-alive clock runs
        until the next byte (the watchdog's, not a timer armed and cancelled per request)."""
        if not self._watching:
            self._watch(_IDLE, self._keep_alive_s)

    def _timed_out(self) -> None:
        """The watchdog's call: the watched head or body is past its deadline."""
        what, self._watching = self._watching, 0
        if self.transport.is_closing():
            return
        if what == _IDLE:
            if self._in_head and not self._head_begun and self._idle():
                self.transport.close()  # as uvicorn's keep-alive timeout does
        elif what == _HEAD and self._in_head:
            if not self._idle():
                # an earlier request is still being answered: its answer goes first
                self._watch(_HEAD, self.header_timeout)
            elif self._head_begun:
                self._refuse(408, f"request head not received within {self.header_timeout:g} s")
            else:  # nothing but blank lines: closed as an idle connection is
                self.transport.close()
        elif what == _BODY and not self._in_head:
            received = self._body_bytes - self._body_mark
            if self.flow.read_paused or received >= self.body_min_rate * self.body_timeout:
                self._body_mark = self._body_bytes  # we were not reading, or it keeps up
                self._watch(_BODY, self.body_timeout)
                return
            message = (f"request body slower than {self.body_min_rate:g} bytes/s over "
                       f"{self.body_timeout:g} s")
            if self._body_refusable():
                self._refuse(408, message, after_answers=False)
            else:  # an answer is already on its way: a 408 would be a second one
                self.logger.warning("closed a connection from %s: %s", self.client, message)
                self.transport.close()

    def _idle(self) -> bool:
        """No request on this connection is being answered or waits to be."""
        cycle = self.cycle
        return (cycle is None or cycle.response_complete) and not self.pipeline

    def _body_refusable(self) -> bool:
        """Whether a 408 may be written now for the request whose body is late: uvicorn's
        application has not started answering it (subclasses add requests they own)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_started

    # Refusals ----------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything httptools cannot parse (and to our refusals raised in
        its callbacks): JSON, and only once the requests before it are answered."""
        refusal, self._refusal = self._refusal, None
        status, message = refusal or (400, "invalid HTTP request")
        if refusal is not None or self._in_head:  # a head: earlier requests are answered first
            self._refuse(status, message)
        elif self._body_refusable():  # the body of a request nobody has answered yet
            self._refuse(status, message, after_answers=False)
        else:
            self.logger.warning("closed a connection from %s: %s", self.client, message)
            self.transport.close()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive clock on the watchdog instead of a new timer
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.keep_alive()
        if self._deferred is not None and self._idle():
            self._refuse(*self._deferred)

    def _refuse(self, status: int, message: str, *, after_answers: bool = True) -> None:
        if self.transport.is_closing():
            return
        if after_answers and not self._idle():  # answers owed to earlier requests go first
            self._deferred = (status, message)
            self.flow.pause_reading()
            return
        self.logger.warning("refused a request from %s: %s", self.client, message)
        body = orjson.dumps({"error": message})
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"content-type: application/json\r\n",
                  b"content-length: ", str(len(body)).encode(), b"\r\n",
                  b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(lines))
        self.transport.close()


_REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large"}


def limited(protocol: type[BoundedHttpToolsProtocol], limits: HttpLimits | None
            ) -> type[BoundedHttpToolsProtocol]:
    """``protocol`` with ``limits`` (the keep-alive timeout goes to uvicorn's Config)."""
    if limits is None:
        return protocol
    return type(protocol.__name__, (protocol,), {
        "max_header_bytes": limits.max_header_bytes,
        "max_header_count": limits.max_header_count,
        "max_url_bytes": limits.max_url_bytes,
        "header_timeout": limits.header_timeout,
        "body_timeout": limits.body_timeout,
        "body_min_rate": limits.body_min_rate,
    })
