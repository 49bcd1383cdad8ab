"""The router's upstream HTTP/1.1 client against real loopback servers that misbehave on cue."""

from __future__ import annotations

import asyncio
import socket

import pytest

from router.client import UpstreamError
from router.h1client import H1Client


class RawServer:
    """A loopback TCP server answering each request with ``answer(request_bytes)``.

    ``answer`` returns the raw bytes to send (or None to send nothing) and whether to close.
    Counts connections and requests so tests can see reuse.
    """

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                data, close = await self.answer(head + body)
                if data:
                    writer.write(data)
                    await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def ok(body: bytes = b'{"ok":true}', extra: bytes = b""):
    async def answer(_request: bytes):
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body), False
    return answer


async def test_forwards_method_path_headers_and_body_and_reuses_the_connection() -> None:
    async with RawServer(ok(b"hello")) as srv:
        client = H1Client()
        for i in range(3):
            resp = await client.request("POST", srv.url + f"/v2/models/m/infer?x={i}",
                                        headers=[("content-type", "application/json"),
                                                 ("x-request-id", f"r{i}"), ("Host", "evil")],
                                        body=b'{"a":1}', timeout=5)
            assert resp.status == 200 and resp.body == b"hello"
            assert ("content-type", "application/json") in resp.headers
        await client.close()
    assert srv.connections == 1  # keep-alive: one connection for three requests
    first = srv.requests[0]
    assert first.startswith(b"POST /v2/models/m/infer?x=0 HTTP/1.1\r\n")
    assert b"x-request-id: r0\r\n" in first and b"content-length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a":1}')
    assert b"evil" not in first  # hop-by-hop and Host are the client's own


async def test_concurrent_requests_use_separate_connections_then_share_the_pool() -> None:
    gate = asyncio.Event()

    async def slow(_request: bytes):
        await gate.wait()
        return (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"), False

    async with RawServer(slow) as srv:
        client = H1Client()
        calls = [asyncio.create_task(client.request("GET", srv.url + "/", headers=[], body=b"",
                                                    timeout=5)) for _ in range(4)]
        await asyncio.sleep(0.1)
        gate.set()
        answers = await asyncio.gather(*calls)
        assert [a.body for a in answers] == [b"x"] * 4
        assert srv.connections == 4
        await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
        assert srv.connections == 4  # taken from the pool
        await client.close()


async def test_chunked_answer_is_reassembled() -> None:
    async def chunked(_request: bytes):
        return (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), False

    async with RawServer(chunked) as srv:
        client = H1Client()
        resp = await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
        assert resp.body == b"hello world"
        resp = await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
        assert resp.body == b"hello world" and srv.connections == 1
        await client.close()


async def test_a_pooled_connection_the_server_closed_is_replaced_transparently() -> None:
    async def close_after(_request: bytes):
        return (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), True  # closes, no header

    async with RawServer(close_after) as srv:
        client = H1Client()
        for _ in range(3):
            resp = await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
            assert resp.body == b"ok"
        assert srv.connections == 3
        await client.close()


async def test_connection_close_answer_is_not_pooled() -> None:
    async with RawServer(ok(b"1", extra=b"connection: close\r\n")) as srv:
        client = H1Client()
        await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
        await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
        assert srv.connections == 2
        await client.close()


async def test_timeout_is_classified_and_the_late_answer_never_reaches_the_next_request() -> None:
    delays = iter([0.5, 0.0])

    async def late(request: bytes):
        await asyncio.sleep(next(delays))
        tag = request.split(b" ")[1]
        return (b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(tag)).encode() + b"\r\n\r\n"
                + tag), False

    async with RawServer(late) as srv:
        client = H1Client()
        with pytest.raises(UpstreamError) as err:
            await client.request("GET", srv.url + "/first", headers=[], body=b"", timeout=0.1)
        assert err.value.kind == "timeout" and "0.1" in str(err.value)
        resp = await client.request("GET", srv.url + "/second", headers=[], body=b"", timeout=5)
        assert resp.body == b"/second"
        await client.close()


async def test_connect_refused_is_a_connect_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        client = H1Client()
        with pytest.raises(UpstreamError) as err:
            await client.request("GET", f"http://127.0.0.1:{port}/", headers=[], body=b"",
                                 timeout=5)
        assert err.value.kind == "connect" and str(port) in str(err.value)


async def test_dropped_before_answer_is_a_reset_and_garbage_is_a_reset() -> None:
    async def drop(_request: bytes):
        return None, True

    async def garbage(_request: bytes):
        return b"NOT HTTP AT ALL\r\n\r\n", False

    for answer, words in ((drop, "closed the connection"), (garbage, "malformed")):
        async with RawServer(answer) as srv:
            client = H1Client()
            with pytest.raises(UpstreamError) as err:
                await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=5)
            assert err.value.kind == "reset" and words in str(err.value)
            await client.close()


async def test_head_answer_completes_without_a_body() -> None:
    async with RawServer(ok(b"0123456789")) as srv:
        async def head_answer(_request: bytes):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", False
        srv.answer = head_answer
        client = H1Client()
        resp = await client.request("HEAD", srv.url + "/", headers=[], body=b"", timeout=2)
        assert resp.status == 200 and resp.body == b""
        srv.answer = ok(b"after")
        resp = await client.request("GET", srv.url + "/", headers=[], body=b"", timeout=2)
        assert resp.body == b"after"
        await client.close()


async def test_non_http_upstreams_are_refused() -> None:
    client = H1Client()
    with pytest.raises(UpstreamError) as err:
        await client.request("GET", "ftp://127.0.0.1:1/", headers=[], body=b"", timeout=1)
    assert err.value.kind == "connect" and "http://" in str(err.value)


async def test_https_to_a_plain_server_fails_as_a_connect_error() -> None:
    """https:// is TLS (tests/security/test_tls_router.py); a server that answers plain
    HTTP/1.1 fails the handshake, which counts as a connect failure (retried elsewhere)."""
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = H1Client()
    try:
        with pytest.raises(UpstreamError) as err:
            await client.request("GET", f"https://127.0.0.1:{port}/", headers=[], body=b"",
                                 timeout=2)
        assert err.value.kind == "connect", err.value
    finally:
        await client.close()
        server.close()
