"""The request head is bounded on the model server and the router alike: an enormous header is a
fast 431 that leaves other clients unaffected, malformed requests get JSON 400s, and a large body
right behind a small head is still a body."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _raw(url: str, payload: bytes, timeout: float = 30) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sent = 0
        while sent < len(payload):
            try:
                sent += sock.send(payload[sent:sent + 65536])
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before taking it all
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize("path", ["/v2/models/iris/infer", "/v2/health/ready"])
def test_a_huge_header_is_431_json_fast_and_others_keep_being_served(server, path) -> None:
    huge = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Big: ".encode()
            + b"a" * (32 * 1024 * 1024) + b"\r\n\r\n{}")
    others: list[float] = []

    def well_behaved() -> None:
        with httpx.Client() as http:
            for _ in range(20):
                started = time.perf_counter()
                assert http.post(f"{server.url}/v2/models/iris/infer", json=BODY).status_code == 200
                others.append(time.perf_counter() - started)

    thread = threading.Thread(target=well_behaved)
    started = time.perf_counter()
    thread.start()
    status, doc = _status_and_json(_raw(server.url, huge))
    took = time.perf_counter() - started
    thread.join(30)
    assert status == 431 and "request head over" in doc["error"]
    assert took < 10  # was 18 s for 64 MiB; the bound stops reading at 64 KiB
    assert len(others) == 20 and max(others) < 2


def test_malformed_requests_get_json_400(server) -> None:
    status, doc = _status_and_json(_raw(server.url, b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n"))
    assert status == 400 and doc == {"error": "invalid HTTP request"}


def test_a_large_body_behind_a_small_head_is_a_body(server) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2]] * 20_000  # ~600 kB of JSON, arriving with the head
    body = json.dumps({"inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP64",
                                   "data": [v for r in rows for v in r]}]}).encode()
    head = (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode()
    answer = _raw(server.url, head + body)
    status, doc = _status_and_json(answer)
    assert status == 200 and doc["outputs"][0]["shape"] == [20_000]


def test_keep_alive_requests_after_a_fast_path_answer_are_bounded_too(server) -> None:
    first = json.dumps(BODY).encode()
    ok = (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(first)}\r\n"
          f"\r\n").encode() + first
    huge = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = _raw(server.url, ok + huge)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 431" in answer
