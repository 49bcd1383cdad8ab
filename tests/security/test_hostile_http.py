"""Hostile HTTP against a real model server and a real router in front of it, over raw sockets:
each abuse gets its exact refusal — status and ``{"error": ...}`` body, then a closed
connection — or a clean close when there is nobody to answer; never uvicorn's plain text, never
a hang. And while a batch of hostile clients runs, a well-behaved client's p99 stays within 2x
of its baseline.

Both processes run with the default size limits (64 KiB head, 100 headers, 8 KiB target) and
time limits of about a second (``--header-timeout 1 --body-timeout 1 --body-min-rate 1000
--keep-alive-timeout 2``), so the suite stays fast.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_support import (
    BODY_MIN_RATE,
    BODY_TIMEOUT,
    GOOD,
    HEADER_TIMEOUT,
    KEEP_ALIVE,
    LIMIT_FLAGS,
    RouterProcess,
    ServerProcess,
    exchange,
    good_request,
    model_folder,
)

pytestmark = pytest.mark.slow

TARGETS = ["server", "router"]
# How late a time limit may fire: the watchdog sweeps every timeout/8, plus a loaded machine.
LATE = 1.5
ATTACK_SLACK_S = 0.001  # see test_a_good_client_keeps_its_p99_while_hostile_clients_run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = ServerProcess(model_folder(tmp), "--grpc-port", "0", *LIMIT_FLAGS)
    router = None
    try:
        server.wait_ready()
        router = RouterProcess(tmp, server, *LIMIT_FLAGS).wait_ready()
        yield {"server": server.http_port, "router": router.http_port}
    finally:
        if router is not None:
            router.stop()
        server.stop()


@pytest.fixture(params=TARGETS)
def port(request: pytest.FixtureRequest, stack: dict[str, int]) -> Iterator[int]:
    yield stack[request.param]
    still_serving(stack[request.param])  # whatever the test did, good clients are served


def still_serving(port: int) -> None:
    answer = exchange(port, good_request(close=True))
    ((status, _, body),) = answer.responses()
    assert status == 200 and b'"outputs"' in body, answer.data[:300]


def refused(answer, status: int, error: str) -> None:  # noqa: ANN001
    """The one answer is ``status`` with exactly ``{"error": error}``, and then a close."""
    assert answer.only() == (status, {"error": error}), answer.data[:300]
    ((_, headers, _),) = answer.responses()
    assert headers.get("connection") == "close"
    assert answer.closed


HEAD = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"


# -- sizes and counts ----------------------------------------------------------------------
def test_a_giant_header_is_431_and_fast(port: int) -> None:
    answer = exchange(port, HEAD + b"X-Big: " + b"a" * (8 << 20) + b"\r\n\r\n")
    refused(answer, 431, "request head over 65536 bytes")
    assert answer.seconds < 5


def test_many_small_headers_are_431(port: int) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    refused(exchange(port, HEAD + headers + b"Content-Length: 0\r\n\r\n"), 431,
            "more than 100 request headers")


def test_a_hundred_headers_are_fine(port: int) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(95))  # + Host, length, close...
    answer = exchange(port, HEAD + headers + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                      % len(GOOD) + GOOD)
    assert answer.responses()[0][0] == 200


def test_a_huge_request_line_is_414(port: int) -> None:
    target = b"/v2/models/" + b"m" * 10_000 + b"/infer"
    refused(exchange(port, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"), 414,
            "request target over 8192 bytes")


def test_a_huge_request_line_is_refused_before_the_head_ends(port: int) -> None:
    # the target alone is over the limit: the answer comes without waiting for the headers
    answer = exchange(port, b"GET /" + b"a" * 9000, quiet=3)
    refused(answer, 414, "request target over 8192 bytes")


@pytest.mark.parametrize("length,status,error", [
    (b"1000000000000", 413, "request body of 1000000000000 bytes exceeds the 67108864-byte limit"),
    (b"99999999999999999999999", 400, "invalid HTTP request"),   # overflows: a parse error
    (b"-1", 400, "invalid HTTP request"),
    (b"12abc", 400, "invalid HTTP request"),
])
def test_absurd_content_lengths(port: int, length: bytes, status: int, error: str) -> None:
    answer = exchange(port, HEAD + b"Content-Length: " + length + b"\r\n\r\n", quiet=3)
    assert answer.only() == (status, {"error": error}), answer.data[:300]


# -- malformed and smuggling-shaped requests -----------------------------------------------
MALFORMED = {
    "nul in a header": HEAD + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "nul in the method": b"PO\x00ST / HTTP/1.1\r\n\r\n",
    "a header without a colon": HEAD + b"NoColonHere\r\n\r\n",
    "a space before the colon": HEAD + b"Content-Length : 2\r\n\r\n{}",
    "length and chunked both": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"0\r\n\r\n",
    "two different lengths": HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "invalid chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "chunk longer than said": HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
    "a TLS hello on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
    "an unknown HTTP version": b"GET /v2/health/live HTTP/7.3\r\nHost: x\r\n\r\n",
    "binary noise": bytes(random.Random(7).randrange(256) for _ in range(512)),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_are_json_400_and_close(port: int, case: str) -> None:
    refused(exchange(port, MALFORMED[case], quiet=3), 400, "invalid HTTP request")


def test_an_upgrade_with_a_body_is_refused_not_silently_emptied(port: int) -> None:
    payload = (HEAD + b"Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: %d\r\n\r\n"
               % len(GOOD) + GOOD)
    refused(exchange(port, payload, quiet=3), 400,
            "protocol upgrades are not supported on requests with a body "
            "(drop Connection: upgrade)")


def test_an_upgrade_without_a_body_is_answered_as_http_1_1_and_closed(port: int) -> None:
    answer = exchange(port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                      b"Upgrade: websocket\r\n\r\nGET /v2/health/live HTTP/1.1\r\n\r\n", quiet=3)
    assert [r[0] for r in answer.responses()] == [200] and answer.closed


def test_an_http_0_9_style_line_is_answered_once_and_closed(port: int) -> None:
    answer = exchange(port, b"GET /v2/health/live\r\n\r\n", quiet=3)
    assert answer.only() == (200, {"live": True}) and answer.closed


def test_pipelined_garbage_after_a_good_request(port: int) -> None:
    answer = exchange(port, good_request() + b"\x16\x03garbage\r\n\r\n", quiet=3)
    (first, second) = answer.responses()
    assert first[0] == 200 and b'"outputs"' in first[2]  # the good request is answered first
    assert (second[0], second[2]) == (400, b'{"error":"invalid HTTP request"}')
    assert second[1]["connection"] == "close" and answer.closed


def test_pipelined_good_requests_then_a_giant_header(port: int) -> None:
    payload = good_request() * 3 + HEAD + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = exchange(port, payload, quiet=3)
    assert [r[0] for r in answer.responses()] == [200, 200, 200, 431] and answer.closed


def test_a_body_without_length_or_chunking_is_an_empty_body(port: int) -> None:
    # HTTP/1.1 requests have no read-until-close body: the JSON is the next "request"
    answer = exchange(port, HEAD + b"\r\n" + GOOD, quiet=3)
    (first, second) = answer.responses()
    assert first[0] == 400 and first[2].startswith(b'{"error":"malformed JSON')
    assert (second[0], second[2]) == (400, b'{"error":"invalid HTTP request"}')
    assert answer.closed


# -- time limits ---------------------------------------------------------------------------
def test_slow_headers_are_408_within_the_header_timeout(port: int) -> None:
    paced = [(HEAD, 0.25)] + [(b"X-Slow: %d\r\n" % i, 0.25) for i in range(40)]
    answer = exchange(port, paced)
    refused(answer, 408, f"request head not received within {HEADER_TIMEOUT:g} s")
    assert answer.seconds < HEADER_TIMEOUT + LATE


def test_a_head_byte_every_few_seconds_is_cut_off(port: int) -> None:
    paced = [(b"G", 0.6), (b"E", 0.6), (b"T", 0.6), (b" ", 0.6), (b"/", 0.6)]
    answer = exchange(port, paced)
    refused(answer, 408, f"request head not received within {HEADER_TIMEOUT:g} s")


def test_a_slow_body_is_408(port: int) -> None:
    head = HEAD + b"Content-Length: %d\r\n\r\n" % len(GOOD)
    paced = [(head, 0.1)] + [(GOOD[i:i + 4], 0.2) for i in range(0, len(GOOD), 4)]
    answer = exchange(port, paced)
    refused(answer, 408, f"request body slower than {BODY_MIN_RATE:g} bytes/s over "
            f"{BODY_TIMEOUT:g} s")
    assert answer.seconds < 2 * BODY_TIMEOUT + LATE


def test_a_body_fast_enough_is_served_even_when_it_takes_several_windows(port: int) -> None:
    body = b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]' \
           + b" " * 6000 + b"}"
    head = HEAD + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    paced = [(head, 0.0)] + [(body[i:i + 600], 0.25) for i in range(0, len(body), 600)]
    answer = exchange(port, paced)  # 2,400 bytes/s for 2.5 s: above the floor
    assert answer.responses()[0][0] == 200


def test_a_truncated_body_is_408_not_a_hang(port: int) -> None:
    head = HEAD + b"Content-Length: %d\r\n\r\n" % len(GOOD)
    answer = exchange(port, head + GOOD[:20])
    refused(answer, 408, f"request body slower than {BODY_MIN_RATE:g} bytes/s over "
            f"{BODY_TIMEOUT:g} s")


def test_a_truncated_head_is_408_not_a_hang(port: int) -> None:
    answer = exchange(port, HEAD + b"Content-Le")
    refused(answer, 408, f"request head not received within {HEADER_TIMEOUT:g} s")


def test_a_connection_that_sends_nothing_is_closed_cleanly(port: int) -> None:
    answer = exchange(port, b"")
    assert answer.data == b"" and answer.closed
    assert KEEP_ALIVE - 0.2 < answer.seconds < KEEP_ALIVE + LATE


def test_blank_lines_forever_are_closed_like_an_idle_connection(port: int) -> None:
    answer = exchange(port, [(b"\r\n", 0.3)] * 20)
    assert answer.data == b"" and answer.closed and answer.seconds < 6.5


def test_an_idle_keep_alive_connection_is_closed_after_a_fast_path_answer(port: int) -> None:
    answer = exchange(port, good_request())
    assert [r[0] for r in answer.responses()] == [200] and answer.closed
    assert KEEP_ALIVE - 0.2 < answer.seconds < KEEP_ALIVE + LATE


def test_an_idle_keep_alive_connection_is_closed_after_an_answer_on_uvicorns_path(
        port: int) -> None:
    answer = exchange(port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r[0] for r in answer.responses()] == [200] and answer.closed
    assert KEEP_ALIVE - 0.2 < answer.seconds < KEEP_ALIVE + LATE


def test_each_request_restarts_the_keep_alive_clock(port: int) -> None:
    # four requests 0.7 KEEP_ALIVE apart: the connection lives 2.8 KEEP_ALIVE, then idles out
    pause = 0.7 * KEEP_ALIVE
    answer = exchange(port, [(good_request(), pause)] * 3 + [(good_request(), 0.0)])
    assert [r[0] for r in answer.responses()] == [200] * 4 and answer.closed
    assert 3 * pause + KEEP_ALIVE - 0.2 < answer.seconds < 3 * pause + KEEP_ALIVE + LATE


def test_a_slow_answer_is_never_cut_by_the_next_slow_head(port: int) -> None:
    # a pipelined head that stalls while the previous request is still being answered gets
    # that answer first, then its own 408
    answer = exchange(port, good_request() + b"GET /v2/health/live HTTP/1.1\r\nHost")
    statuses = [r[0] for r in answer.responses()]
    assert statuses == [200, 408] and answer.closed


# -- a well-behaved client while hostile ones run -------------------------------------------
def _p99(port: int, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            conn.request("POST", "/v2/models/m/infer", body=GOOD,
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            times.append(time.perf_counter() - started)
            assert reply.status == 200
    finally:
        conn.close()
    return statistics.quantiles(times, n=100)[98]


def _attack(port: int, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    """Hostile clients, bounded in number and time: slowloris heads and bodies, idle
    connections, giant headers, header floods, garbage."""
    # Attackers are other machines: here they share two cores with the client and the
    # servers, so they yield the CPU to both; what the servers spend on them still counts.
    os.nice(19)
    deadline = time.monotonic() + seconds
    rng = random.Random(1)

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def drip(first: bytes, byte: bytes) -> None:
        while time.monotonic() < deadline:
            try:
                with connect() as sock:
                    sock.sendall(first)
                    while time.monotonic() < deadline:
                        time.sleep(0.2)
                        sock.sendall(byte)
            except OSError:
                pass  # cut off by the server: start again

    def blast(make: object) -> None:
        while time.monotonic() < deadline:
            try:
                with connect() as sock:
                    sock.sendall(make())  # type: ignore[operator]
                    while sock.recv(65536):
                        pass
            except OSError:
                pass
            time.sleep(0.2)

    def idle() -> None:
        socks = []
        try:
            for _ in range(30):
                socks.append(connect())
            time.sleep(max(deadline - time.monotonic(), 0))
        except OSError:
            pass
        finally:
            for sock in socks:
                sock.close()

    body_head = HEAD + b"Content-Length: 100000\r\n\r\n"
    big = HEAD + b"X-Big: " + b"a" * (256 << 10) + b"\r\n\r\n"  # 4x the limit
    many = HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    workers = ([threading.Thread(target=drip, args=(HEAD, b"X")) for _ in range(10)]
               + [threading.Thread(target=drip, args=(body_head, b"{")) for _ in range(5)]
               + [threading.Thread(target=idle)]
               + [threading.Thread(target=blast, args=(lambda: big,)) for _ in range(2)]
               + [threading.Thread(target=blast, args=(lambda: many,))]
               + [threading.Thread(target=blast, args=(lambda: bytes(
                   rng.randrange(256) for _ in range(300)),))])
    for worker in workers:
        worker.daemon = True
        worker.start()
    ready.set()
    for worker in workers:
        worker.join(seconds + 10)


@pytest.mark.parametrize("target", TARGETS)
def test_a_good_client_keeps_its_p99_while_hostile_clients_run(stack: dict[str, int],
                                                              target: str) -> None:
    port = stack[target]
    _p99(port, 100)  # warm up
    # Sub-millisecond latencies on two cores shared with other work are noisy: a baseline and
    # an attacked run of 300 requests each, three times interleaved, medians compared; a
    # miss is measured once more (noise comes and goes; a server that stalls misses twice).
    # The bound is twice the baseline, and never under a millisecond above it: with a
    # baseline of 0.2 ms, one request that queues behind the parse and rejection of a
    # 256 KiB header on the shared core moves p99 by a few hundred µs (CI saw 0.2 -> 0.6 ms),
    # while a server that waits on a slow client stalls for its timeouts (seconds).
    for _attempt in range(2):
        baselines, attacked = _rounds(port, rounds=3, n=300)
        base, under = statistics.median(baselines), statistics.median(attacked)
        bound = max(2 * base, base + ATTACK_SLACK_S)
        print(f"{target}: p99 baseline {[f'{b * 1e3:.2f}' for b in baselines]} ms, "
              f"under attack {[f'{a * 1e3:.2f}' for a in attacked]} ms")
        if under <= bound:
            break
    assert under <= bound, (baselines, attacked)
    still_serving(port)


def _rounds(port: int, *, rounds: int, n: int) -> tuple[list[float], list[float]]:
    baselines, attacked = [], []
    context = multiprocessing.get_context("spawn")
    for _ in range(rounds):
        baselines.append(_p99(port, n))
        ready = context.Event()
        attacker = context.Process(target=_attack, args=(port, 30.0, ready), daemon=True)
        attacker.start()
        try:
            assert ready.wait(30)
            time.sleep(0.5)  # connections open, slow clients mid-request
            attacked.append(_p99(port, n))
        finally:
            attacker.terminate()
            attacker.join(10)
    return baselines, attacked


def test_suite_flags_reach_both_processes(stack: dict[str, int], tmp_path: Path) -> None:
    """The limits are the processes' flags, not hard-coded: a head timeout of 1 s on both."""
    for port in stack.values():
        answer = exchange(port, HEAD)
        assert answer.only()[0] == 408 and answer.seconds < HEADER_TIMEOUT + LATE
