"""uvicorn's httptools protocol with a bound on the request head and JSON refusals.

httptools gathers a header that arrives in pieces by concatenating them, so a client sending one
enormous header costs quadratic time on the event loop: a 64 MiB header took 18 s to parse while
every other client waited. :class:`BoundedHttpToolsProtocol` never lets more than
``max_header_bytes`` of a request's head (request line and headers) reach the parser: past it
the answer is 431 and the connection closes. Body bytes are not counted — data is fed in slices
while a head is incomplete, so a head followed by a large body in one read is not mistaken for a
large head. Malformed requests get ``{"error": ...}`` with 400, as every other refusal, instead
of uvicorn's plain text.
"""

from __future__ import annotations

import orjson

from serving.transport.coalesce import CoalescingHttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024  # request line + headers; browsers and proxies stay far below


class BoundedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    max_header_bytes: int = MAX_HEADER_BYTES
    _head_bytes: int = 0          # bytes of the current request's head fed to the parser
    _in_head: bool = True         # between a request's first byte and its headers' end

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        self._head_bytes += room
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(431, f"request head over {self.max_header_bytes} bytes")
            return
        super().data_received(data[room:])  # the head ended inside the slice: the rest is body

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes = True, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_complete()
        super().on_headers_complete()

    def head_complete(self) -> None:
        """Subclasses that answer without calling ``on_headers_complete`` call this."""
        self._in_head = False

    def on_message_complete(self) -> None:
        self.message_complete()
        super().on_message_complete()

    def message_complete(self) -> None:
        """What follows is the next request's head (subclasses that answer without calling
        ``on_message_complete`` call this)."""
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid HTTP request")

    def _refuse(self, status: int, message: str) -> None:
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


_REASONS = {400: "Bad Request", 431: "Request Header Fields Too Large"}
