"""The gRPC edge threads' blocking HTTP/1.1 client against real loopback servers that
misbehave on cue (the same RawServer as the event-loop client's tests, on a loop thread)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_h1client import RawServer

from router.client import UpstreamError
from router.h1blocking import BlockingH1Client

CT = b"application/x-protobuf"


class LoopThread:
    """A RawServer on an event loop in a daemon thread."""

    def __init__(self, answer) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.raw = RawServer(answer)
        asyncio.run_coroutine_threadsafe(self.raw.__aenter__(), self.loop).result(5)

    def close(self) -> None:
        async def shut() -> None:
            await self.raw.__aexit__()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def ok(body: bytes, *, close_after: bool = False):
    async def answer(request: bytes):
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body), close_after
    return answer


def test_keeps_one_connection_per_thread_and_sends_the_body_as_given():
    server = LoopThread(ok(b"\x0a\x01m"))
    client = BlockingH1Client(connect_timeout=1)
    try:
        for _ in range(3):
            response = client.request(server.raw.url, "/v2/models/m/infer",
                                      headers=[("x-request-id", "r1")], content_type=CT,
                                      body=b"\x0a\x01m\x2a\x00", timeout=5)
            assert (response.status, response.body) == (200, b"\x0a\x01m")
        assert server.raw.connections == 1
        head, _, body = server.raw.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
        assert b"content-type: application/x-protobuf" in head and b"x-request-id: r1" in head
        assert body == b"\x0a\x01m\x2a\x00"
        with ThreadPoolExecutor(4) as pool:  # each thread its own connection
            list(pool.map(lambda _: client.request(
                server.raw.url, "/x", headers=[], content_type=CT, body=b"", timeout=5),
                range(40)))
        assert 2 <= server.raw.connections <= 5
    finally:
        client.close()
        server.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_transparently():
    server = LoopThread(ok(b"a", close_after=True))  # closes without saying so
    client = BlockingH1Client(connect_timeout=1)
    try:
        for _ in range(3):
            response = client.request(server.raw.url, "/x", headers=[], content_type=CT,
                                      body=b"q", timeout=5)
            assert response.body == b"a"
            time.sleep(0.05)  # let the close reach us
        assert server.raw.connections == 3
    finally:
        client.close()
        server.close()


def test_failures_are_classified_for_the_retry_logic():
    client = BlockingH1Client(connect_timeout=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UpstreamError) as err:
        client.request(dead, "/x", headers=[], content_type=CT, body=b"", timeout=1)
    assert err.value.kind == "connect"

    async def silent(request: bytes):
        await asyncio.sleep(2)
        return None, False
    slow = LoopThread(silent)
    try:
        started = time.perf_counter()
        with pytest.raises(UpstreamError) as err:
            client.request(slow.raw.url, "/x", headers=[], content_type=CT, body=b"",
                           timeout=0.2)
        assert err.value.kind == "timeout" and time.perf_counter() - started < 1
    finally:
        slow.close()

    async def drop(request: bytes):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", True  # then closes
    dropping = LoopThread(drop)
    try:
        with pytest.raises(UpstreamError) as err:
            client.request(dropping.raw.url, "/x", headers=[], content_type=CT, body=b"",
                           timeout=2)
        assert err.value.kind == "reset"
    finally:
        dropping.close()
        client.close()
