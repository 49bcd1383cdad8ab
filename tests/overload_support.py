"""Sustained overload for admission tests: an open loop of 1 MiB requests at a fixed rate,
and the peak RSS growth of the process under it (what an unbounded queue would hold)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

ROWS = 131_072  # 1 MiB of FP32 a request


def _binary_request() -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "x", "shape": [ROWS, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": ROWS * 8}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return header + np.ones((ROWS, 2), np.float32).tobytes(), {
        "inference-header-content-length": str(len(header)),
        "content-type": "application/octet-stream"}


def _rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_loop(url: str, pid: int, *, rate: float, seconds: float
              ) -> tuple[list[tuple[int, float, str | None]], int]:
    """``rate`` V2 binary requests a second to ``url`` for ``seconds`` whatever the answers (an
    open loop, as real clients arrive), 1 MiB each: (status, seconds, Retry-After) of each, and
    how far process ``pid``'s RSS rose above its level before the load at its peak."""
    body, headers = _binary_request()
    client = httpx.Client(limits=httpx.Limits(max_connections=256), timeout=60)
    assert client.post(url, content=body, headers=headers).status_code == 200  # warm
    baseline = peak = _rss_bytes(pid)
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, _rss_bytes(pid))
            time.sleep(0.01)

    def one(at: float) -> tuple[int, float, str | None]:
        time.sleep(max(0.0, at - time.perf_counter()))
        started = time.perf_counter()
        answer = client.post(url, content=body, headers=headers)
        return answer.status_code, time.perf_counter() - started, \
            answer.headers.get("retry-after")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter() + 0.05
    try:
        with ThreadPoolExecutor(256) as pool:
            results = list(pool.map(one, [start + i / rate for i in range(int(rate * seconds))]))
    finally:
        sampling = False
        sampler.join()
        client.close()
    return results, peak - baseline


def check_overload(capped: tuple[str, int], uncapped: tuple[str, int], *, capacity: float,
                   delay: float, max_wait: float) -> None:
    """Three times ``capacity`` requests/s for 3 s at ``capped`` (an infer URL behind an
    admission cap, and the pid of the process keeping it), then at ``uncapped`` (the same
    model behind a cap that admits everything): the excess
    refused with 429 + Retry-After faster than half a predict (``delay``), admitted requests
    answered within ``max_wait``, and memory bounded where the uncapped run's grows."""
    results, growth = open_loop(*capped, rate=3 * capacity, seconds=3)
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(admitted) + len(refused) == len(results) == int(9 * capacity)
    assert len(admitted) >= 0.6 * capacity * 3 and len(refused) >= 4.5 * capacity
    assert all(retry == "1" for _, _, retry in refused)
    # refused fast (the 1 MiB upload included); admitted ones wait at most the bounded queue
    assert sorted(s for _, s, _ in refused)[len(refused) // 2] < delay / 2
    assert max(s for _, s, _ in admitted) < max_wait
    everything, uncapped_growth = open_loop(*uncapped, rate=3 * capacity, seconds=3)
    assert {status for status, _, _ in everything} == {200}
    assert growth < 40 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB with a cap"
    assert uncapped_growth > max(2 * growth, 40 * 2**20), (growth, uncapped_growth)
