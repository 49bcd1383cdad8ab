"""uvicorn's httptools protocol with its writes coalesced: one ``send`` per response, not two.

uvicorn writes a response's status line and headers in one ``transport.write`` and the body
in another, so every small inference answer costs two socket writes and two TCP segments. On
loopback each write also runs the receiver's network stack inline; py-spy put those two writes
at about a fifth of the router's CPU. :class:`CoalescingHttpToolsProtocol` hands uvicorn a
transport whose writes are gathered during one event-loop step and flushed together at the
next, so the header and body of a response leave in one write. Everything else (flow control,
close, extra info) goes straight to the real transport; ``close`` flushes first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mypy_extensions import mypyc_attr
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport; writes made in one loop step reach the socket as one write."""

    __slots__ = ("_transport", "_pending", "_loop", "_scheduled")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = loop
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def write_now(self, data: bytes) -> None:
        """Written at once, unless earlier writes wait for this step's flush (order)."""
        if self._pending:
            self.write(data)
        elif data:
            self._transport.write(data)

    def is_closing(self) -> bool:  # asked several times per request: no __getattr__ detour
        return self._transport.is_closing()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@mypyc_attr(allow_interpreted_subclasses=True)  # servers bind settings by subclassing
class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=CoalescingHttpToolsProtocol)``: httptools with coalesced writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
