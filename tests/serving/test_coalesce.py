"""The coalescing transport under the HTTP protocols: writes of one loop step leave together,
``write_now`` leaves at once, and neither ever reorders what was written."""

from __future__ import annotations

import asyncio

from serving.transport.coalesce import CoalescingTransport


class _Socket(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def test_writes_of_one_step_leave_as_one_write_at_the_next() -> None:
    async def run() -> list[bytes]:
        sock = _Socket()
        transport = CoalescingTransport(sock, asyncio.get_running_loop())
        transport.write(b"head ")
        transport.write(b"body")
        assert sock.writes == []
        await asyncio.sleep(0)
        return sock.writes
    assert asyncio.run(run()) == [b"head body"]


def test_write_now_leaves_at_once_but_never_before_earlier_writes() -> None:
    async def run() -> tuple[list[bytes], list[bytes]]:
        sock = _Socket()
        transport = CoalescingTransport(sock, asyncio.get_running_loop())
        transport.write_now(b"first")
        at_once = list(sock.writes)
        transport.write(b"second ")
        transport.write_now(b"third")  # waits behind "second": one write, in order
        assert sock.writes == [b"first"]
        await asyncio.sleep(0)
        transport.write_now(b"")  # nothing to write: no empty send
        return at_once, sock.writes
    at_once, writes = asyncio.run(run())
    assert at_once == [b"first"]
    assert writes == [b"first", b"second third"]


def test_close_flushes_what_waits() -> None:
    async def run() -> list[bytes]:
        sock = _Socket()
        transport = CoalescingTransport(sock, asyncio.get_running_loop())
        transport.write(b"last words")
        transport.close()
        return sock.writes
    assert asyncio.run(run()) == [b"last words"]
