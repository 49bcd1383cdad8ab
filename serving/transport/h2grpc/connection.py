"""One HTTP/2 connection of the event-loop gRPC server: frames in, calls out, flow control.

Why not the ``h2`` package: it spent ~570 us of CPU per unary call on this machine (state
machines, events and header validation in pure Python), more than grpcio's whole per-call cost.
This protocol does only what a gRPC server needs — no push, no priorities, no HTTP/1.1
upgrade — and does it with one ``struct`` call per frame and one ``write`` per answer. HPACK
decoding is ``hpack``'s (serving/transport/h2grpc/headers.py).

Limits: frames larger than the frame size we announced, header blocks (with CONTINUATIONs)
over the header limit, and more concurrent streams than announced are refused; each call's
message size is checked from its 5-byte prefix, before the body is buffered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from serving.transport.h2grpc import frames as f
from serving.transport.h2grpc.headers import HeaderDecoder, HeaderError

if TYPE_CHECKING:
    from serving.transport.h2grpc.calls import Call
    from serving.transport.h2grpc.server import GrpcServer

log = logging.getLogger("turnout.grpc.h2")

RECEIVE_WINDOW = 1 << 24  # per stream and per connection; replenished as data arrives
FRAME_SIZE = 1 << 20      # the largest frame we accept (announced)
HEAD_SIZE = f.HEAD.size
LINGER_SECONDS = 0.25  # after a GOAWAY for an error, before the close


class Stream:
    """Send-side state of one stream (what flow control holds back) and its call."""

    __slots__ = ("id", "call", "send_window", "pending", "unacked", "closed_remote",
                 "header_block", "header_end_stream", "done")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.call: Call | None = None
        self.send_window = send_window
        self.pending: deque[tuple[int, bytes]] = deque()  # (frame kind/flags, payload)
        self.unacked = 0  # received DATA not yet given back by WINDOW_UPDATE
        self.closed_remote = False
        self.header_block: bytearray | None = None  # a block waiting for CONTINUATIONs
        self.header_end_stream = False
        self.done = False  # our END_STREAM is written (or the stream was reset)


class Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = True
        self.decoder = HeaderDecoder(server.max_header_bytes)
        self.streams: dict[int, Stream] = {}
        self.last_stream = 0
        self.send_window = f.DEFAULT_WINDOW   # connection-level, towards the peer
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_frame_size = f.DEFAULT_FRAME
        self.unacked = 0
        # request bytes held by calls that have not taken them yet; past ``buffer_cap`` the
        # connection window is not given back, so a client cannot make us hold more
        self.buffered = 0
        self.buffer_cap = server.max_receive + RECEIVE_WINDOW
        self.continuing: Stream | None = None  # the stream whose header block is open
        self.going_away = False
        self.closed = False
        self.peer = ""
        # read by the server's sweep (GrpcServer.sweep): when the connection opened, and the
        # last stream id and the time it first saw the connection without streams
        self.opened_at = 0.0
        self.idle_mark = -1
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        self.transport = tcp
        self.opened_at = asyncio.get_running_loop().time()
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple) and len(address) >= 2:
            family = "ipv6" if ":" in str(address[0]) else "ipv4"
            self.peer = f"{family}:{address[0]}:{address[1]}"
        self.server.connections.add(self)
        tcp.write(f.settings((
            (f.MAX_CONCURRENT_STREAMS, self.server.max_streams),
            (f.INITIAL_WINDOW_SIZE, RECEIVE_WINDOW),
            (f.MAX_FRAME_SIZE, FRAME_SIZE),
            (f.MAX_HEADER_LIST_SIZE, self.server.max_header_bytes),
            (f.ENABLE_PUSH, 0),
        )) + f.window_update(0, RECEIVE_WINDOW - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            if stream.call is not None:
                stream.call.cancel()
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # after our GOAWAY: read and dropped until the close
            return
        buffer = self.buffer
        buffer += data
        if self.preface:
            if len(buffer) < len(f.PREFACE):
                if not f.PREFACE.startswith(bytes(buffer)):
                    self._abort(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if not buffer.startswith(f.PREFACE):
                self._abort(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            del buffer[:len(f.PREFACE)]
            self.preface = False
        offset, size = 0, len(buffer)
        unpack = f.HEAD.unpack_from
        try:
            while size - offset >= HEAD_SIZE:
                length_kind, flags, stream_id = unpack(buffer, offset)
                length = length_kind >> 8
                if length > FRAME_SIZE:
                    raise _ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                end = offset + HEAD_SIZE + length
                if end > size:
                    break
                payload = bytes(buffer[offset + HEAD_SIZE:end])
                offset = end
                self._frame(length_kind & 0xFF, flags, stream_id & 0x7FFFFFFF, payload)
                if self.closed:
                    return
        except _ConnectionError as err:
            self._abort(err.code, str(err))
            return
        del buffer[:offset]

    # -- frames -----------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != f.CONTINUATION:
            raise _ConnectionError(f.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == f.DATA:
            self._data(flags, stream_id, payload)
        elif kind == f.HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == f.CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == f.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == f.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == f.PING:
            if len(payload) != 8 or stream_id:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "bad PING")
            if not flags & f.ACK:
                self._write(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream.done = True
                if stream.call is not None:
                    stream.call.cancel()
        elif kind == f.GOAWAY:
            self.going_away = True
            self._close_if_idle()
        elif kind == f.PUSH_PROMISE:
            raise _ConnectionError(f.PROTOCOL_ERROR, "a client cannot push")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or not stream_id & 1:
            raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS on an invalid stream id")
        start, end = 0, len(payload)
        if flags & f.PADDED:
            if not payload:
                raise _ConnectionError(f.PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & f.PRIORITY_FLAG:
            start += 5
        if start > end:
            raise _ConnectionError(f.PROTOCOL_ERROR, "bad padding")
        block = payload[start:end]
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id <= self.last_stream:
                raise _ConnectionError(f.STREAM_CLOSED, "HEADERS on a closed stream")
            self.last_stream = stream_id
            stream = Stream(stream_id, self.peer_initial_window)
            self.streams[stream_id] = stream
        elif not flags & f.END_STREAM:  # a second block is the client's trailers
            raise _ConnectionError(f.PROTOCOL_ERROR, "trailers without END_STREAM")
        if flags & f.END_HEADERS:
            self._header_block(stream, block, bool(flags & f.END_STREAM))
        else:
            stream.header_block = bytearray(block)
            stream.header_end_stream = bool(flags & f.END_STREAM)
            self.continuing = stream

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.continuing
        if stream is None or stream.id != stream_id or stream.header_block is None:
            raise _ConnectionError(f.PROTOCOL_ERROR, "unexpected CONTINUATION")
        stream.header_block += payload
        if len(stream.header_block) > self.server.max_header_bytes:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            block, stream.header_block = bytes(stream.header_block), None
            self.continuing = None
            self._header_block(stream, block, stream.header_end_stream)

    def _header_block(self, stream: Stream, block: bytes, end_stream: bool) -> None:
        try:
            headers = self.decoder.decode(block)
        except HeaderError as err:
            raise _ConnectionError(err.code, str(err)) from None
        if stream.call is not None:  # trailers: nothing in them matters to a server
            self._end_of_request(stream)
            return
        if self.going_away or len(self.streams) > self.server.max_streams:
            self.streams.pop(stream.id, None)
            self._write(f.rst_stream(stream.id, f.REFUSED_STREAM))
            return
        stream.call = self.server.new_call(self, stream, headers)
        if end_stream:
            self._end_of_request(stream)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self.unacked += size
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed_remote:
            if stream_id > self.last_stream or stream_id == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we reset or answered early: its data is counted and dropped
        data = payload
        if flags & f.PADDED:
            if not payload or payload[0] >= size:
                raise _ConnectionError(f.PROTOCOL_ERROR, "bad padding")
            data = payload[1:size - payload[0]]
        stream.unacked += size
        if stream.unacked > RECEIVE_WINDOW // 2 and not flags & f.END_STREAM:
            self._write(f.window_update(stream_id, stream.unacked))
            stream.unacked = 0
        if data and stream.call is not None and not stream.call.finished:
            self.buffered += len(data)
            stream.call.on_data(data)
        self._give_back()
        if flags & f.END_STREAM:
            self._end_of_request(stream)

    def release(self, size: int) -> None:
        """A call took (or dropped) ``size`` buffered request bytes."""
        self.buffered -= size
        self._give_back()

    def _give_back(self) -> None:
        """The connection window back to the client once half is used, unless calls hold
        more than the cap: then only when they take their bytes (bounded memory)."""
        if self.unacked > RECEIVE_WINDOW // 2 and self.buffered <= self.buffer_cap:
            self._write(f.window_update(0, self.unacked))
            self.unacked = 0

    def _end_of_request(self, stream: Stream) -> None:
        stream.closed_remote = True
        if stream.call is not None:
            stream.call.on_end()
        if stream.done:
            self.streams.pop(stream.id, None)
            self._close_if_idle()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = f.u32(payload) & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise _ConnectionError(f.FLOW_CONTROL_ERROR, "connection window overflow")
            for stream in list(self.streams.values()):
                if stream.pending:
                    self._flush(stream)
            return
        found = self.streams.get(stream_id)
        if found is not None:
            stream = found
            stream.send_window += increment
            if stream.pending:
                self._flush(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise _ConnectionError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            return
        if len(payload) % 6:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "bad SETTINGS")
        for key, value in f.parse_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise _ConnectionError(f.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise _ConnectionError(f.PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                self.peer_frame_size = value
        self._write(f.frame(f.SETTINGS, f.ACK, 0))
        for stream in list(self.streams.values()):
            if stream.pending:
                self._flush(stream)

    # -- sending (used by calls) ------------------------------------------------------------
    def send_response(self, stream: Stream, head: bytes | None, message: bytes,
                      trailers: bytes) -> None:
        """Headers (unless already sent), one DATA payload and the trailers (END_STREAM):
        one write when the windows allow it, which they do for small answers."""
        size = len(message)
        if (not stream.pending and size <= stream.send_window and size <= self.send_window
                and size <= self.peer_frame_size):
            stream.send_window -= size
            self.send_window -= size
            out = [f.HEAD.pack((size << 8) | f.DATA, 0, stream.id), message,
                   f.HEAD.pack((len(trailers) << 8) | f.HEADERS, f.END_HEADERS | f.END_STREAM,
                               stream.id), trailers]
            if head is not None:
                out.insert(0, f.HEAD.pack((len(head) << 8) | f.HEADERS, f.END_HEADERS,
                                          stream.id) + head)
            self._write(b"".join(out))
            self._finished(stream)
            return
        if head is not None:
            self._write(f.frame(f.HEADERS, f.END_HEADERS, stream.id, head))
        self.send_message(stream, message)
        self.send_trailers(stream, trailers)

    def send_headers(self, stream: Stream, block: bytes, *, end_stream: bool = False) -> None:
        flags = f.END_HEADERS | (f.END_STREAM if end_stream else 0)
        self._write(f.frame(f.HEADERS, flags, stream.id, block))
        if end_stream:
            self._finished(stream)

    def send_message(self, stream: Stream, message: bytes) -> None:
        stream.pending.append((f.DATA, message))
        self._flush(stream)

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        stream.pending.append((f.HEADERS, block))
        self._flush(stream)

    def reset(self, stream: Stream, code: int) -> None:
        if not stream.done:
            self._write(f.rst_stream(stream.id, code))
        stream.done = True
        stream.pending.clear()
        self.streams.pop(stream.id, None)
        self._close_if_idle()

    def _flush(self, stream: Stream) -> None:
        pending = stream.pending
        while pending:
            kind, payload = pending[0]
            if kind == f.HEADERS:
                pending.popleft()
                self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, stream.id,
                                    payload))
                self._finished(stream)
                return
            allowed = min(stream.send_window, self.send_window, self.peer_frame_size)
            if allowed <= 0 and payload:
                return  # wait for WINDOW_UPDATE
            chunk, rest = payload[:allowed], payload[allowed:]
            stream.send_window -= len(chunk)
            self.send_window -= len(chunk)
            self._write(f.frame(f.DATA, 0, stream.id, chunk))
            if rest:
                pending[0] = (kind, rest)
            else:
                pending.popleft()

    def _finished(self, stream: Stream) -> None:
        stream.done = True
        if stream.closed_remote:
            self.streams.pop(stream.id, None)
            stream.call = None  # no cycle with the call: both go by reference counting
        elif self.streams.get(stream.id) is stream:
            # answered before the request ended (an early error): stop its data politely
            self._write(f.rst_stream(stream.id, f.NO_ERROR))
            self.streams.pop(stream.id, None)
            stream.call = None
        self._close_if_idle()

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    # -- closing ----------------------------------------------------------------------------
    def go_away(self, debug: bytes = b"") -> None:
        """Take no new streams; close once the open ones are answered (graceful stop, or an
        idle connection)."""
        if not self.closed and not self.going_away:
            self._write(f.goaway(self.last_stream, f.NO_ERROR, debug))
        self.going_away = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.streams and self.transport is not None:
            self.closed = True
            self.transport.close()

    def expire(self, reason: str) -> None:
        """Closed by the server's sweep (a handshake that never came)."""
        self._abort(f.SETTINGS_TIMEOUT, reason)

    def _abort(self, code: int, reason: str) -> None:
        log.debug("closing HTTP/2 connection from %s: %s", self.peer, reason)
        if self.transport is not None and not self.closed:
            self.transport.write(f.goaway(self.last_stream, code, reason[:200].encode()))
            self.closed = True
            self.buffer.clear()
            # Closing with unread input would reset the connection and could lose the GOAWAY
            # on its way out: what still arrives is read and dropped for a moment first.
            asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport is not None else None


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
