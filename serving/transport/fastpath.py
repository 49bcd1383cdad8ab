"""Hot HTTP routes answered from uvicorn's protocol callbacks, without an ASGI cycle.

Per request, uvicorn's httptools protocol builds an ASGI scope, a ``RequestResponseCycle``,
an ``asyncio.Event`` and a task, and passes four messages through ``receive`` and ``send``:
py-spy put that machinery above a third of the model server's CPU for a small ONNX model, more
than decoding, predicting and encoding together. :class:`FastPathProtocol` lets a
:class:`FastHandler` claim requests when their headers arrive (the model server claims its
inference routes, the router the routes it proxies), reads the body with the same httptools
parser, and writes the handler's answer in one go:

- synchronously inside ``on_message_complete`` when the handler can answer without awaiting
  (an inline, unbatched model: its predict would run on the event loop anyway);
- from a callback when the handler can answer later without a coroutine of its own
  (:class:`SoonFastHandler`: the model server's batched models, whose answer is a future's
  result): no task at all, the future joins uvicorn's tasks so that graceful shutdown waits for
  it (and cancels it when the drain time is over);
- otherwise from one task that awaits the handler (thread-pool models, upstream calls) — a
  task, but no scope, cycle, event or ASGI messages.

Answers from a later loop step are written at once (``CoalescingTransport.write_now``: nothing
in that step to merge them with, and the client's next request comes a loop step sooner;
torch REST c=64: +2% in 6 of 8 pairs).

HTTP's rules stay uvicorn's: responses leave in request order (a request that arrives while an
earlier one is unanswered waits its turn, claimed or not), keep-alive and ``Connection: close``
are honoured, writes wait while the client is not reading, graceful shutdown waits for claimed
requests in flight (their tasks join uvicorn's), and everything unclaimed — other routes,
bodies without a Content-Length or over the payload limit, ``Expect: 100-continue``, upgrade
requests, query strings and escaped paths — takes uvicorn's own path unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, ClassVar, Protocol, cast

import uvicorn
from mypy_extensions import mypyc_attr
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.transport.auth import Guard
from serving.transport.bounded import BoundedHttpToolsProtocol, HttpLimits, limited

# An answer before framing: status, body, headers (content-length is added when framing).
Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
Headers = list[tuple[bytes, bytes]]
log = logging.getLogger("turnout.transport")


class FastHandler(Protocol):
    """What a server gives :func:`bind_protocol`."""

    max_payload_bytes: int

    def claim(self, path: str, headers: Headers) -> tuple[Any, bool] | None:
        """For a POST to ``path`` (no query string): an opaque route and whether it can be
        answered without awaiting (see :class:`InlineFastHandler`), or None to leave it to
        uvicorn."""

    def answer(self, route: Any, body: bytes, headers: Headers) -> Awaitable[Reply]:
        """Answer a claimed request that must await."""


class InlineFastHandler(FastHandler, Protocol):
    """A handler whose ``claim`` may say a request can be answered without awaiting."""

    def answer_now(self, route: Any, body: bytes, headers: Headers) -> Reply:
        """Answer a claimed request without awaiting anything."""


class SoonFastHandler(FastHandler, Protocol):
    """A handler that answers requests that must wait from a callback, without a task."""

    def answer_soon(self, route: Any, body: bytes, headers: Headers,
                    reply: Callable[[Reply | None], None]) -> Reply | asyncio.Future[Any]:
        """Answer a claimed request that must wait: its answer at once (refused before
        waiting), or a future whose completion calls ``reply`` exactly once — with the answer,
        or None when the future was cancelled (the server's drain time is over)."""


def bind_protocol(handler: FastHandler, limits: HttpLimits | None = None, *,
                  guard: Guard | None = None, uvicorn_protocol: type = HttpToolsProtocol,
                  ) -> type[asyncio.Protocol] | str:
    """The protocol class to give ``uvicorn.Config(http=...)`` for this handler, bounded by
    ``limits`` (serving/transport/bounded.py; its defaults when None).

    With a ``guard`` (serving/transport/auth.py) a request is claimed only once the guard lets
    it through; one it refuses is left to uvicorn's path, where the ASGI app — which must then
    be wrapped in :class:`~serving.transport.auth.GuardedApp` with the same guard — answers
    the refusal in order, as for any unclaimed request.

    When this uvicorn lacks the internals the fast path relies on, uvicorn's own ``"h11"``
    protocol, with a warning: slower, never wrong, and still bounded — the servers give
    ``uvicorn.Config`` ``h11_max_incomplete_event_size`` (:func:`h11_limit`), where uvicorn's
    httptools path would let one huge header stall the event loop. (``uvicorn_protocol`` is
    the class checked for those internals: uvicorn's httptools protocol.)
    """
    missing = missing_internals(uvicorn_protocol)
    if missing:
        log.warning("uvicorn %s lacks what the fast HTTP path relies on (%s); serving on "
                    "uvicorn's own h11 path", getattr(uvicorn, "__version__", "?"),
                    ", ".join(missing))
        return "h11"
    return type("BoundFastPathProtocol", (limited(FastPathProtocol, limits),),
                {"handler": handler, "guard": guard,
                 "answer_soon": getattr(handler, "answer_soon", None)})


def h11_limit(limits: HttpLimits | None) -> int:
    """``uvicorn.Config(h11_max_incomplete_event_size=...)``: the request-head cap on the h11
    fallback path (:func:`bind_protocol`), the same as the fast path's."""
    return (limits or HttpLimits()).max_header_bytes


# What FastPathProtocol (and BoundedHttpToolsProtocol under it) reads, calls or replaces on
# uvicorn's HttpToolsProtocol.
_METHODS = ("on_headers_complete", "on_body", "on_message_complete", "on_response_complete",
            "_start_asgi_task", "_unset_keepalive_if_required",
            "shutdown", "on_url", "on_header", "send_400_response",
            "on_message_begin", "data_received", "connection_made", "connection_lost")
_ATTRIBUTES = ("parser", "url", "headers", "expect_100_continue", "pipeline", "cycle", "flow",
               "scope",
               "server_state", "timeout_keep_alive", "tasks", "loop",
               "logger", "transport")


def missing_internals(protocol: type = HttpToolsProtocol) -> list[str]:
    """Names the fast path needs that ``protocol`` does not define or assign (checked in the
    compiled code of its methods, so no source is needed)."""
    assigned: set[str] = set()
    for value in vars(protocol).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            assigned.update(code.co_names)
    missing = [m for m in _METHODS if not callable(getattr(protocol, m, None))]
    return missing + [a for a in _ATTRIBUTES if a not in assigned]


class _Busy:
    """Stands in as uvicorn's current cycle while a claimed request is unanswered, so uvicorn
    queues requests it parses meanwhile (its pipeline) instead of starting them out of order,
    and so shutdown and disconnects reach the claimed request."""

    response_complete = False
    disconnected = False
    keep_alive = True
    # uvicorn sets its cycle's event on disconnect and body events to wake the cycle's
    # receive(); nothing ever waits on this one, so a shared no-op (no Event per request).
    message_event: ClassVar[_NoWaiters]


class _NoWaiters:
    """``set`` and ``clear`` of an event that has no waiters."""

    def set(self) -> None:
        return None

    def clear(self) -> None:
        return None


_Busy.message_event = _NoWaiters()


@mypyc_attr(allow_interpreted_subclasses=True)  # servers bind settings by subclassing
class FastPathProtocol(BoundedHttpToolsProtocol):
    handler: ClassVar[FastHandler]
    # Authentication (None: off, and no request pays for it).
    guard: ClassVar[Guard | None] = None
    # The handler's SoonFastHandler.answer_soon, or None.
    answer_soon: ClassVar[Callable[..., Reply | asyncio.Future[Any]] | None] = None
    # The claimed request whose body is being read: (route, now, headers, keep-alive).
    _claimed: tuple[Any, bool, Headers, bool] | None = None
    _body: list[bytes]
    # Claimed requests answered or waiting, in order, while one is being answered; their
    # presence is what _Busy signals to uvicorn.
    _busy: _Busy | None = None
    _waiting: deque[tuple[Any, bool, Headers, bool, bytes]]
    # Keep-alive of the request being answered through answer_soon.
    _soon_keep_alive = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._waiting = deque()
        super().connection_made(transport)

    def begin_message(self) -> None:
        # uvicorn's, less the ASGI scope (~1 µs): a claimed request never needs one, and
        # on_headers_complete builds it for the others
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        claimed = self._claim()
        if claimed is None:
            url, headers, expect = self.url, self.headers, self.expect_100_continue
            super().begin_message()  # the scope, as uvicorn builds it at a message's start
            self.url, self.headers, self.expect_100_continue = url, headers, expect
            self.scope["headers"] = headers
            super().on_headers_complete()
            return
        self.head_complete()
        self._claimed = claimed
        self._body = []

    def on_body(self, body: bytes) -> None:
        if self._claimed is None:
            super().on_body(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        claimed = self._claimed
        if claimed is None:
            super().on_message_complete()
            return
        self.message_complete()
        self._claimed = None
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        route, now, headers, keep_alive = claimed
        if self._busy is not None:  # an earlier claimed request is still being answered
            self._waiting.append((route, now, headers, keep_alive, body))
            if len(self._waiting) >= _MAX_WAITING:
                self.flow.pause_reading()  # a client pipelining without end waits for us
        elif self.flow.write_paused or (not now and self.answer_soon is None):
            self._busy = self.cycle = _Busy()  # type: ignore[assignment]
            self._waiting.append((route, now, headers, keep_alive, body))
            self._spawn(self._answer_in_order)
        else:
            answer: Any
            if now:
                answer = cast(InlineFastHandler, self.handler).answer_now(route, body, headers)
            else:
                answer = self.answer_soon(route, body, headers,  # type: ignore[misc]
                                          self._replied)
                if type(answer) is not tuple:  # a future: _replied answers
                    self._busy = self.cycle = _Busy()  # type: ignore[assignment]
                    self._soon_keep_alive = keep_alive
                    tasks = self.tasks
                    tasks.add(answer)  # type: ignore[arg-type]
                    answer.add_done_callback(tasks.discard)  # type: ignore[union-attr]
                    return
            status, payload, out = answer  # type: ignore[misc]
            self._write(status, payload, out, keep_alive)
            self._after_response(keep_alive)

    def _body_refusable(self) -> bool:
        if self._claimed is not None:  # ours: answerable unless earlier answers are pending
            return self._busy is None
        return super()._body_refusable()

    def shutdown(self) -> None:
        if self._busy is not None:
            self._busy.keep_alive = False  # finish what was claimed, then close
            return
        super().shutdown()

    def _claim(self) -> tuple[Any, bool, Headers, bool] | None:
        """The fast-path state for the request whose headers just arrived, or None."""
        parser = self.parser
        if parser.get_method() != b"POST" or self.expect_100_continue or self.pipeline \
                or parser.should_upgrade() \
                or (self.cycle is not None and not self.cycle.response_complete
                    and self.cycle is not self._busy):
            return None  # uvicorn owns the connection's turn; it queues in order itself
        try:
            path = self.url.decode("ascii")
        except UnicodeDecodeError:
            return None
        # (on the str: `b"?" in url` first tries the needle as an int and costs ~0.25 µs)
        if "?" in path or "%" in path:
            return None
        headers = self.headers
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return None
        try:
            if length is None or int(length) > self.handler.max_payload_bytes:
                return None  # uvicorn's path streams, counts and refuses with 413
        except ValueError:
            return None
        claimed = self.handler.claim(path, headers)
        if claimed is None:
            return None
        guard = self.guard
        if guard is not None and guard.check("POST", path, headers) is not None:
            return None  # refused: the guarded ASGI app answers it on uvicorn's path
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        return claimed[0], claimed[1], headers, keep_alive

    def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        task: Any = self.loop.create_task(work())  # type: ignore[arg-type]
        self.tasks.add(task)  # graceful shutdown waits for it, as for uvicorn's own
        task.add_done_callback(self.tasks.discard)

    def _replied(self, reply: Reply | None) -> None:
        """The answer to the request given to ``answer_soon`` (the first one waiting)."""
        busy = self._busy
        assert busy is not None
        if reply is None:  # cancelled: the drain time is over
            self._shutting_down(busy)
            return
        keep_alive = self._soon_keep_alive and busy.keep_alive
        if self._waiting or self.flow.write_paused:  # later requests, or a client not reading
            self._spawn(functools.partial(self._answer_in_order, (reply, keep_alive)))
            return
        if busy.disconnected or self.transport.is_closing():
            self._end_turn(busy, keep_alive, 0)
            return
        status, payload, out = reply
        self._write(status, payload, out, keep_alive, now=True)
        self._end_turn(busy, keep_alive, 1)

    async def _answer_in_order(self, first: tuple[Reply, bool] | None = None) -> None:
        """Answer the waiting claimed requests one by one (after ``first``, an answer given
        already, and its keep-alive), then hand the turn to uvicorn."""
        busy = self._busy
        assert busy is not None
        waiting = self._waiting
        keep_alive = True
        answered = 0
        while (first is not None or waiting) and keep_alive:
            if first is not None:
                (status, payload, out), keep_alive = first
                first = None
            else:
                route, now, headers, keep_alive, body = waiting.popleft()
                try:
                    if now:
                        status, payload, out = cast(InlineFastHandler, self.handler).answer_now(
                            route, body, headers)
                    else:
                        status, payload, out = await self.handler.answer(route, body, headers)
                except asyncio.CancelledError:  # the drain time is over (uvicorn cancels us)
                    self._shutting_down(busy)
                    raise
                except Exception:  # a handler bug: the connection cannot be trusted further
                    self.logger.exception("unhandled error answering %r", route)
                    status, payload, out = 500, b'{"error":"internal server error"}', [
                        (b"content-type", b"application/json")]
                    keep_alive = False
            keep_alive = keep_alive and busy.keep_alive
            if busy.disconnected or self.transport.is_closing():
                break
            if self.flow.write_paused:
                await self.flow.drain()
            self._write(status, payload, out, keep_alive, now=True)
            answered += 1
        self._end_turn(busy, keep_alive, answered)

    def _end_turn(self, busy: _Busy, keep_alive: bool, answered: int) -> None:
        """After the claimed requests' answers: close, or hand the connection to uvicorn."""
        self._busy = None
        if self.cycle is busy:  # else uvicorn has queued requests of its own behind ours
            self.cycle = None  # type: ignore[assignment]
        if busy.disconnected or self.transport.is_closing():
            return
        if not keep_alive:
            self.transport.close()
            return
        self.server_state.total_requests += answered - 1  # on_response_complete counts one
        self.on_response_complete()  # resumes reading; starts uvicorn's queued requests

    def _shutting_down(self, busy: _Busy) -> None:
        """A claimed request cut off at the end of the drain time: 503, and close."""
        if not (busy.disconnected or self.transport.is_closing()):
            self._write(503, b'{"error":"the server is shutting down; retry"}',
                        [(b"content-type", b"application/json"),
                         (b"retry-after", b"1")], False)
            self.transport.close()

    def _after_response(self, keep_alive: bool) -> None:
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        else:
            self.keep_alive()

    def _write(self, status: int, body: bytes, headers: Headers, keep_alive: bool, *,
               now: bool = False) -> None:
        """The answer, framed; ``now``: written at once (an answer from a task step, where
        coalescing has nothing to merge it with) rather than at the next loop step."""
        line = _STATUS_LINES.get(status)
        if line is None:
            line = _STATUS_LINES[status] = _status_line(status)
        parts = [line]
        for name, value in self.server_state.default_headers:  # server, date: as uvicorn sends
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        if now:
            self.transport.write_now(b"".join(parts))  # type: ignore[attr-defined]
        else:
            self.transport.write(b"".join(parts))


_STATUS_LINES: dict[int, bytes] = {}
# Claimed requests a connection may have queued before it stops reading from the client.
_MAX_WAITING = 64


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()
