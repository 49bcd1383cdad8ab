"""Admission control: a model predicting in threads admits its threads plus ``max_queue``
requests; the rest are refused at once with 429 + Retry-After (REST) or RESOURCE_EXHAUSTED
(gRPC), so an overloaded model keeps its admitted latency and bounded memory instead of
queueing every request. Real server, real clients, a model that takes a known time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import ServerProcess
from tests.overload_support import check_overload

DELAY = 0.2
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("admission")
    for name, extra in (("slow", {"max_queue": 2}), ("slow_default", {}),
                        ("slow_unbounded", {"max_queue": 100_000})):
        (root / name).mkdir()
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump({
            "runtime": "turnout_test_runtimes:Slow", "parameters": {"delay": DELAY},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}], **extra}))
    proc = ServerProcess(root, "--inference-threads", "2").wait_ready()
    yield proc
    proc.stop()


def burst(url: str, model: str, n: int) -> list[tuple[int, float, httpx.Headers, dict]]:
    """``n`` requests at once, each timed from its send to its answer: the clients are made
    and connected first (an httpx client costs tens of ms of CPU to make, which on a busy
    2-core machine would otherwise dwarf the server's answer times being compared)."""
    clients = [httpx.Client(base_url=url, timeout=30) for _ in range(n)]
    for client in clients:
        client.get("/v2/health/live")
    start = threading.Barrier(n)

    def one(client: httpx.Client) -> tuple[int, float, httpx.Headers, dict]:
        start.wait()
        started = time.perf_counter()
        answer = client.post(f"/v2/models/{model}/infer", json=BODY)
        return answer.status_code, time.perf_counter() - started, answer.headers, answer.json()

    try:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, clients))
    finally:
        for client in clients:
            client.close()


def test_beyond_threads_plus_queue_requests_are_refused_at_once(server: ServerProcess) -> None:
    results = burst(server.url, "slow", 24)
    admitted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(admitted) + len(refused) == 24
    assert len(refused) >= 12, [r[0] for r in results]   # 2 threads + 2 waiting, give or take
    for _, _, headers, body in refused:
        assert headers["retry-after"] == "1"
        assert "limit 4" in body["error"] and "retry" in body["error"]
    # Refused without waiting for a predict: most in less time than one predict takes, which
    # every admitted request waited at least.
    waited = sorted(seconds for _, seconds, _, _ in refused)
    assert min(seconds for _, seconds, _, _ in admitted) >= DELAY
    assert waited[len(waited) // 2] < DELAY, waited
    # Admitted requests waited for at most the queue ahead of them: two rounds of two threads.
    assert max(seconds for _, seconds, _, _ in admitted) < 4 * DELAY + 1.0
    for _, _, _, body in admitted:
        np.testing.assert_allclose(body["outputs"][0]["data"], [2.0, 4.0])
    # The refusals are counted as such, and the model serves as before afterwards.
    metrics = httpx.get(f"{server.url}/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("turnout_requests_total{")
                and 'model="slow"' in x and 'status="overloaded"' in x and 'protocol="rest"' in x)
    assert float(line.rsplit(" ", 1)[1]) == len(refused)
    assert burst(server.url, "slow", 1)[0][0] == 200


def test_sustained_overload_at_three_times_capacity_keeps_memory_bounded(
        server: ServerProcess) -> None:
    # two threads, 0.2 s a request: 10 requests/s; two rounds of two threads at most queued
    check_overload((f"{server.url}/v2/models/slow/infer", server.proc.pid),
                   (f"{server.url}/v2/models/slow_unbounded/infer", server.proc.pid),
                   capacity=2 / DELAY,
                   delay=DELAY, max_wait=4 * DELAY + 1.0)


def test_grpc_clients_get_resource_exhausted(server: ServerProcess) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def one(_: int) -> str:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2]], dtype=np.float32))
        try:
            client.infer("slow", [tensor], client_timeout=30)
            return "OK"
        except InferenceServerException as exc:
            return str(exc.status())
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(16)))
    assert codes.count("StatusCode.RESOURCE_EXHAUSTED") >= 6, codes
    assert set(codes) <= {"OK", "StatusCode.RESOURCE_EXHAUSTED"}


def test_the_default_queue_is_sized_from_the_models_latency(server: ServerProcess) -> None:
    # Slow declares thread execution (nothing measured): 2 threads + 8 waiting.
    results = burst(server.url, "slow_default", 30)
    refused = [r for r in results if r[0] == 429]
    assert refused and all("limit 10" in r[3]["error"] for r in refused)


def test_a_measured_latency_sizes_the_queue() -> None:
    from serving.server.dataplane import admission_limit

    # 4 threads; the model's max_queue when set, else ~1 s of work (8 to 4096 waiting)
    for seconds, queue, want in [(0.002, None, 4 + 2000), (0.5, None, 4 + 8),
                                 (0.00001, None, 4 + 4096), (None, None, 4 + 8), (0.002, 0, 4),
                                 (0.002, 3, 4 + 3)]:
        assert admission_limit(4, queue, seconds) == want
