"""The event-loop gRPC transport (serving/transport/h2grpc) against grpcio's own client: unary
and streaming calls, metadata both ways, deadlines, status details, compression, messages far
over the flow-control windows, many calls at once, TLS with ALPN, an interceptor that refuses —
and hostile HTTP/2 bytes on raw sockets, after which the server still answers."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import trustme

from serving.transport.h2grpc import GrpcServer
from serving.transport.h2grpc import frames as f
from serving.transport.h2grpc.calls import AbortError, Call, CallContext, Later
from serving.transport.h2grpc.connection import Stream
from tests.native_support import weakly_referenced_compiled

SERVICE = "test.Echo"
LIMIT = 16 * 1024 * 1024


def _identity(data: bytes) -> bytes:
    return data


class Echo:
    def __init__(self) -> None:
        self.cancelled: list[str] = []  # Deferred calls whose answer was no longer wanted

    def Deferred(self, request: bytes, context: Any) -> Later:  # noqa: N802
        """Answers from a callback (a Later): ``ok:<s>`` reversed after <s> seconds, ``abort``
        with a status, ``boom`` with an unexpected error."""
        kind, _, delay = request.decode().partition(":")
        later = Later(on_cancel=lambda: self.cancelled.append(request.decode()))

        def settle() -> None:
            if kind == "abort":
                later.fail(AbortError(grpc.StatusCode.FAILED_PRECONDITION, "refused later"))
            elif kind == "boom":
                later.fail(RuntimeError("secret path /srv/models"))
            else:
                later.answer(request[::-1])

        asyncio.get_running_loop().call_later(float(delay or 0), settle)
        return later

    async def Unary(self, request: bytes, context: Any) -> bytes:  # noqa: N802
        metadata = dict(context.invocation_metadata())
        if "x-fail" in metadata:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"refused: {metadata['x-fail']} \u2713 100%")
        context.set_trailing_metadata((("x-len", str(len(request))),
                                       ("x-echo-bin", metadata.get("x-in-bin", b"")),))
        return request

    def Inline(self, request: bytes, context: Any) -> bytes:  # noqa: N802
        """Answers without a coroutine: the transport writes it in the same loop step."""
        return request[::-1]

    async def Slow(self, request: bytes, context: Any) -> bytes:  # noqa: N802
        remaining = context.time_remaining()
        await asyncio.sleep(float(request.decode()))
        return str(remaining).encode()

    async def Count(self, request: bytes, context: Any) -> AsyncIterator[bytes]:  # noqa: N802
        for i in range(int(request.decode())):
            yield str(i).encode()

    async def Sum(self, requests: AsyncIterator[bytes], context: Any) -> bytes:  # noqa: N802
        total = 0
        async for message in requests:
            total += int(message.decode())
        return str(total).encode()

    async def Chat(self, requests: AsyncIterator[bytes],  # noqa: N802
                   context: Any) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message.upper()


class RefuseSecret(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if dict(details.invocation_metadata).get("authorization") != "Bearer ok":
            async def refuse(request: Any, context: Any) -> Any:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
            return grpc.unary_unary_rpc_method_handler(refuse)
        return await continuation(details)


def _handlers(echo: Echo) -> grpc.GenericRpcHandler:
    kinds = {"Unary": grpc.unary_unary_rpc_method_handler,
             "Inline": grpc.unary_unary_rpc_method_handler,
             "Deferred": grpc.unary_unary_rpc_method_handler,
             "Slow": grpc.unary_unary_rpc_method_handler,
             "Count": grpc.unary_stream_rpc_method_handler,
             "Sum": grpc.stream_unary_rpc_method_handler,
             "Chat": grpc.stream_stream_rpc_method_handler}
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: make(getattr(echo, name), request_deserializer=_identity,
                   response_serializer=_identity) for name, make in kinds.items()})


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    loop = Loop()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    folder = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))

    echo = Echo()

    async def start() -> dict[str, Any]:
        plain = GrpcServer(max_receive=LIMIT, max_send=LIMIT)
        plain.add_generic_rpc_handlers((_handlers(echo),))
        guarded = GrpcServer(interceptors=[RefuseSecret()])
        guarded.add_generic_rpc_handlers((_handlers(Echo()),))
        tls = GrpcServer()
        tls.add_generic_rpc_handlers((_handlers(Echo()),))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        return {"plain": plain, "port": await plain.start("127.0.0.1", 0),
                "guarded": guarded, "guarded_port": await guarded.start("127.0.0.1", 0),
                "tls": tls, "tls_port": await tls.start("127.0.0.1", 0, ssl_context=context)}

    started = loop.run(start())
    started["ca"] = (folder / "ca.pem").read_bytes()
    started["loop"] = loop
    started["echo"] = echo
    try:
        yield started
    finally:
        for name in ("plain", "guarded", "tls"):
            loop.run(started[name].stop(None))
        loop.close()


@pytest.fixture(scope="module")
def channel(servers: dict[str, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{servers['port']}", options=[
            ("grpc.max_receive_message_length", LIMIT + 1024),
            ("grpc.max_send_message_length", 2 * LIMIT)]) as chan:
        yield chan


def _unary(channel: grpc.Channel, name: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{name}")


def test_unary_calls_carry_messages_and_metadata_both_ways(channel: grpc.Channel) -> None:
    answer, call = _unary(channel, "Unary").with_call(
        b"hello", metadata=(("x-in-bin", b"\x00\xff binary"), ("x-plain", "v")))
    assert answer == b"hello"
    trailing = dict(call.trailing_metadata())
    assert trailing["x-len"] == "5"
    assert trailing["x-echo-bin"] == b"\x00\xff binary"
    assert call.code() == grpc.StatusCode.OK
    assert _unary(channel, "Inline")(b"abc") == b"cba"
    assert _unary(channel, "Unary")(b"") == b""  # an empty message is a message


def test_an_abort_keeps_its_code_and_its_non_ascii_details(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Unary")(b"x", metadata=(("x-fail", "because"),))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "refused: because \u2713 100%"


def test_unknown_methods_are_unimplemented(channel: grpc.Channel) -> None:
    for _ in range(2):  # the second time from the server's negative cache
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/test.Echo/Nope")(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_deadline_ends_a_slow_call_and_the_handler_sees_the_time_left(
        channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Slow")(b"2", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    remaining = float(_unary(channel, "Slow")(b"0", timeout=5))
    assert 3.5 < remaining <= 5.1  # the client rounds its grpc-timeout up


def test_a_handler_answers_later_from_a_callback(servers: dict[str, Any],
                                                 channel: grpc.Channel) -> None:
    assert _unary(channel, "Deferred")(b"ok:0.05") == b"50.0:ko"
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Deferred")(b"abort")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "refused later"
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Deferred")(b"boom")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
    assert servers["echo"].cancelled == []
    # the deadline comes first: the call ends, the handler is told, its late answer is dropped
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Deferred")(b"ok:0.6", timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the client's deadline and the server's (grpc-timeout) end at the same moment, each on its
    # own side: the server's loop may tell the handler a moment after the client gave up
    told_by = time.monotonic() + 2
    while servers["echo"].cancelled != ["ok:0.6"] and time.monotonic() < told_by:
        time.sleep(0.01)
    assert servers["echo"].cancelled == ["ok:0.6"]
    time.sleep(0.6)  # the late answer comes and goes nowhere; the server answers as before
    assert _unary(channel, "Deferred")(b"ok") == b"ko"


def test_streaming_in_every_direction(channel: grpc.Channel) -> None:
    counted = channel.unary_stream(f"/{SERVICE}/Count")(b"5")
    assert [int(m) for m in counted] == [0, 1, 2, 3, 4]
    total = channel.stream_unary(f"/{SERVICE}/Sum")(iter([b"1", b"2", b"39"]))
    assert total == b"42"
    chat = channel.stream_stream(f"/{SERVICE}/Chat")(iter([b"a", b"bc", b"def"]))
    assert list(chat) == [b"A", b"BC", b"DEF"]


def test_gzip_requests_are_inflated(channel: grpc.Channel) -> None:
    payload = b"compressible " * 10_000
    assert _unary(channel, "Unary")(payload, compression=grpc.Compression.Gzip) == payload


def test_messages_far_beyond_the_flow_control_windows(channel: grpc.Channel) -> None:
    big = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB each way
    assert _unary(channel, "Unary")(big) == big
    assert _unary(channel, "Inline")(big) == big[::-1]


def test_a_message_over_the_limit_is_resource_exhausted(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, "Unary")(b"x" * (LIMIT + 1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _unary(channel, "Unary")(b"after") == b"after"


def test_many_calls_at_once_on_one_connection(channel: grpc.Channel) -> None:
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: _unary(channel, "Unary")(str(i).encode()),
                                range(500)))
    assert answers == [str(i).encode() for i in range(500)]
    # nothing holds the open connection (a compiled class) weakly: tests/native_support.py
    assert weakly_referenced_compiled() == []


def test_finished_calls_leave_no_cycles_for_the_collector(channel: grpc.Channel) -> None:
    """A call, its stream and its context go by reference counting once answered: a cycle
    per call made the collector run every few dozen requests under load."""
    ours = (Call, CallContext, Stream)
    gc.collect()
    gc.disable()
    try:
        for i in range(20):
            assert _unary(channel, "Unary")(str(i).encode()) == str(i).encode()
            assert _unary(channel, "Inline")(b"ab") == b"ba"
            assert _unary(channel, "Deferred")(b"ok") == b"ko"
            with pytest.raises(grpc.RpcError):
                _unary(channel, "Unary")(b"x", metadata=(("x-fail", "no"),))
        assert [int(m) for m in channel.unary_stream(f"/{SERVICE}/Count")(b"3")] == [0, 1, 2]
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, ours)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_an_interceptor_decides_from_the_metadata(servers: dict[str, Any]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{servers['guarded_port']}") as chan:
        with pytest.raises(grpc.RpcError) as caught:
            _unary(chan, "Unary")(b"x")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _unary(chan, "Unary")(b"x", metadata=(("authorization", "Bearer ok"),)) == b"x"


def test_tls_with_alpn_h2(servers: dict[str, Any]) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=servers["ca"])
    with grpc.secure_channel(f"127.0.0.1:{servers['tls_port']}", credentials) as chan:
        assert _unary(chan, "Unary")(b"secret") == b"secret"


# -- hostile bytes ----------------------------------------------------------------------------

def _raw(port: int, data: bytes, read_for: float = 1.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def _goaway_code(answer: bytes) -> int | None:
    offset = 0
    while offset + 9 <= len(answer):
        length_kind, _, _ = f.HEAD.unpack_from(answer, offset)
        length, kind = length_kind >> 8, length_kind & 0xFF
        if kind == f.GOAWAY:
            return f.u32(answer, offset + 13)
        offset += 9 + length
    return None


_SETTINGS = f.settings(())


@pytest.mark.parametrize(("name", "data", "code"), [
    ("HTTP/1.1 instead of the preface", b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", f.PROTOCOL_ERROR),
    ("a frame larger than announced", f.PREFACE + _SETTINGS
     + f.HEAD.pack(((2 << 20) << 8) | f.DATA, 0, 1) + b"x" * 100, f.FRAME_SIZE_ERROR),
    ("HEADERS on an even stream", f.PREFACE + _SETTINGS + f.frame(f.HEADERS, 4, 2, b"\x83"),
     f.PROTOCOL_ERROR),
    ("an undecodable header block", f.PREFACE + _SETTINGS
     + f.frame(f.HEADERS, 4, 1, b"\xff\xff\xff\xff\xff\xff"), f.COMPRESSION_ERROR),
    ("endless CONTINUATION frames", f.PREFACE + _SETTINGS + f.frame(f.HEADERS, 0, 1, b"\x83")
     + b"".join(f.frame(f.CONTINUATION, 0, 1, b"\x00" * 16_000) for _ in range(8)),
     f.ENHANCE_YOUR_CALM),
    ("a client PUSH_PROMISE", f.PREFACE + _SETTINGS + f.frame(f.PUSH_PROMISE, 4, 1, b"\0" * 8),
     f.PROTOCOL_ERROR),
])
def test_hostile_connections_are_closed_with_goaway_and_the_server_still_serves(
        servers: dict[str, Any], channel: grpc.Channel, name: str, data: bytes,
        code: int) -> None:
    answer = _raw(servers["port"], data)
    assert _goaway_code(answer) == code, name
    assert _unary(channel, "Unary")(b"still here") == b"still here"


def test_a_ping_is_answered_and_a_reset_stream_is_forgotten(servers: dict[str, Any],
                                                            channel: grpc.Channel) -> None:
    answer = _raw(servers["port"], f.PREFACE + _SETTINGS
                  + f.frame(f.PING, 0, 0, b"12345678")
                  + f.frame(f.RST_STREAM, 0, 1, b"\0\0\0\x08"), read_for=0.5)
    assert f.frame(f.PING, f.ACK, 0, b"12345678") in answer
    assert _goaway_code(answer) is None
    assert not servers["plain"].connections or all(
        not c.streams for c in servers["plain"].connections)


def test_a_client_cannot_make_the_server_hold_more_than_its_buffer_cap() -> None:
    """Streams that announce big messages and never finish them: once the calls hold more
    than the cap, the connection window is not given back, so the client must stop sending."""
    from serving.transport.h2grpc.connection import RECEIVE_WINDOW, Connection

    class Transport:
        def __init__(self) -> None:
            self.out = bytearray()

        def write(self, data: bytes) -> None:
            self.out += data

        def get_extra_info(self, name: str) -> Any:
            return ("127.0.0.1", 1) if name == "peername" else None

        def close(self) -> None:
            pass

    async def run() -> tuple[int, int]:
        server = GrpcServer(max_receive=LIMIT, max_send=LIMIT)
        server.add_generic_rpc_handlers((_handlers(Echo()),))
        server.loop = asyncio.get_running_loop()
        await server.lookup(_details(f"/{SERVICE}/Unary"))  # cached: calls start at once
        conn, transport = Connection(server), Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        block = _header_block(f"/{SERVICE}/Unary")
        conn.data_received(f.PREFACE + f.settings(()))
        granted = RECEIVE_WINDOW
        sent = 0
        chunk = b"\0" * (1 << 20)
        stream_id = 1
        while sent < granted:  # as much as the window allows, 1 MiB frames, never ending
            transport.out.clear()
            conn.data_received(f.frame(f.HEADERS, f.END_HEADERS, stream_id, block)
                               + f.frame(f.DATA, 0, stream_id, b"\0" + LIMIT.to_bytes(4, "big")))
            sent += 5
            for _ in range(8):
                conn.data_received(f.frame(f.DATA, 0, stream_id, chunk))
                sent += len(chunk)
            granted += _connection_increments(bytes(transport.out))
            stream_id += 2
            assert sent < 10 * LIMIT, "the server kept granting window"
        return sent, conn.buffered

    sent, held = asyncio.run(run())
    assert held == sent
    assert held <= LIMIT + 2 * RECEIVE_WINDOW


def _details(method: str) -> Any:
    from serving.transport.h2grpc.calls import HandlerCallDetails

    return HandlerCallDetails(method, ())


def _header_block(path: str) -> bytes:
    import hpack

    return hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                   (":authority", "x"), ("content-type", "application/grpc"),
                                   ("te", "trailers")])


def _connection_increments(data: bytes) -> int:
    total, offset = 0, 0
    while offset + 9 <= len(data):
        length_kind, _, stream_id = f.HEAD.unpack_from(data, offset)
        length, kind = length_kind >> 8, length_kind & 0xFF
        if kind == f.WINDOW_UPDATE and stream_id == 0:
            total += f.u32(data, offset + 9)
        offset += 9 + length
    return total


# -- bounded connection lifetimes -------------------------------------------------------------

class _Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def close(self) -> None:
        self.closed = True


def test_the_sweep_closes_silent_and_idle_connections_and_spares_busy_ones() -> None:
    """The sweep's decisions at chosen times: a connection that never sent the preface goes
    after the handshake time; one without streams after the idle time, counted from the first
    sweep that saw it idle, and a new call in between starts the count again; one with a call
    open is never idle."""
    async def run() -> None:
        server = GrpcServer(handshake_seconds=10, idle_seconds=60)
        server.add_generic_rpc_handlers((_handlers(Echo()),))
        server.loop = asyncio.get_running_loop()
        await server.lookup(_details(f"/{SERVICE}/Slow"))
        block = _header_block(f"/{SERVICE}/Slow")

        def connect(preface: bool) -> tuple[Any, _Transport]:
            from serving.transport.h2grpc.connection import Connection
            conn, transport = Connection(server), _Transport()
            conn.connection_made(transport)  # type: ignore[arg-type]
            conn.opened_at = 0.0
            if preface:
                conn.data_received(f.PREFACE + f.settings(()))
            return conn, transport

        silent, silent_out = connect(False)
        idle, idle_out = connect(True)
        busy, busy_out = connect(True)
        renewed, renewed_out = connect(True)
        busy.data_received(f.frame(f.HEADERS, f.END_HEADERS, 1, block))  # request still open
        for conn in (silent, idle, busy, renewed):
            assert conn in server.connections

        server.sweep(5.0)
        assert not any(c.closed for c in (silent, idle, busy, renewed))
        server.sweep(10.0)
        assert silent.closed and _goaway_code(bytes(silent_out.out)) == f.SETTINGS_TIMEOUT
        server.sweep(40.0)
        renewed.data_received(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, block))
        await asyncio.sleep(0)
        renewed.streams.clear()  # the call ended; a new stream was seen since the last sweep
        server.sweep(64.0)
        assert not idle.closed  # idle since the sweep at 5 s: 59 s so far
        server.sweep(66.0)
        assert idle.closed and idle_out.closed
        assert _goaway_code(bytes(idle_out.out)) == f.NO_ERROR
        assert not busy.closed and not renewed.closed
        server.sweep(123.0)
        assert not renewed.closed  # idle counted from 64 s, when it was first seen idle again
        server.sweep(124.0)
        assert renewed.closed
        assert not busy.closed and _goaway_code(bytes(busy_out.out)) is None
        for stream in list(busy.streams.values()):
            if stream.call is not None:
                stream.call.cancel()

    asyncio.run(run())


def test_real_sockets_a_silent_client_is_cut_and_an_idle_channel_reconnects(
        servers: dict[str, Any]) -> None:
    loop: Loop = servers["loop"]

    async def start() -> tuple[GrpcServer, int]:
        server = GrpcServer(handshake_seconds=0.4, idle_seconds=0.8)
        server.add_generic_rpc_handlers((_handlers(Echo()),))
        return server, await server.start("127.0.0.1", 0)

    server, port = loop.run(start())
    try:
        silent = _raw(port, b"PRI * HTTP/2.0\r\n", read_for=3.0)  # half a preface, then nothing
        assert _goaway_code(silent) == f.SETTINGS_TIMEOUT
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            assert _unary(chan, "Slow")(b"1.5") != b""  # a call longer than the idle time
            assert len(server.connections) == 1
            for _ in range(60):  # closed once idle: the channel's connection is gone
                if not server.connections:
                    break
                threading.Event().wait(0.1)
            assert not server.connections
            assert _unary(chan, "Unary")(b"again") == b"again"  # the channel reconnects
    finally:
        loop.run(server.stop(None))
