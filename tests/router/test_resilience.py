"""Fault tests against real servers: a replica killed under load, a replica answering 503 is
ejected and re-admitted, overload gets fast 429s, timeouts, and reloads under load."""

from __future__ import annotations

import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
SLOW = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
IRIS = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [0.1, 0.2, 0.3, 0.4]}]}


@pytest.fixture(scope="module")
def own(model_zoo, tmp_path_factory, make_folder, start_servers):
    """Servers these tests may break: two echo replicas, and a broken/good iris pair."""
    root = tmp_path_factory.mktemp("faults")
    echo = make_folder(root, "a", model_zoo)
    broken, good = root / "broken", root / "good"
    (broken / "iris" / "1").mkdir(parents=True)
    (broken / "iris" / "1" / "model.joblib").write_bytes(b"not a model")
    shutil.copytree(model_zoo["root"] / "iris" / "1", good / "iris" / "1")
    procs = start_servers([echo, echo, broken, good])
    yield dict(zip(["k1", "k2", "broken", "good"], procs, strict=True)) | {"broken_dir": broken}
    for proc in procs:
        proc.stop()


def count(upstream, model: str, status: str = "success") -> float:
    total = 0.0
    for line in httpx.get(f"{upstream.url}/metrics").text.splitlines():
        if line.startswith("turnout_requests_total{") and f'model="{model}"' in line \
                and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def load(url: str, n: int, *, threads: int = 6, body=BODY, path="/v2/models/m/infer",
         on_progress=None) -> list[int]:
    client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=threads), timeout=30)
    done = 0
    lock = threading.Lock()

    def one(_: int) -> int:
        nonlocal done
        status = client.post(url + path, json=body).status_code
        with lock:
            done += 1
            if on_progress is not None:
                on_progress(done)
        return status

    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(one, range(n)))
    client.close()
    return statuses


def test_killing_a_replica_under_load_fails_no_request(own, router_cls, tmp_path):
    k1, k2 = own["k1"], own["k2"]
    r = router_cls({"upstream": {"health_check": {"interval_seconds": 0.5}},
                    "services": [{"name": "m", "variants": [
                        {"name": "default", "weight": 1, "http": [k1.url, k2.url]}]}]},
                   tmp_path, grpc=False)
    killed = threading.Event()

    def progress(done: int) -> None:
        if done == 100 and not killed.is_set():
            killed.set()
            k2.proc.kill()  # SIGKILL: in-flight requests see dropped connections

    try:
        statuses = load(r.url, 400, on_progress=progress)
        assert killed.is_set()
        assert statuses.count(200) == 400, {s: statuses.count(s) for s in set(statuses)}
        endpoint = {"service": "m", "variant": "default", "endpoint": k2.url}
        failures = sum(r.sample("turnout_router_upstream_requests_total", **endpoint, outcome=o)
                       for o in ("connect", "reset"))
        assert failures >= 1
    finally:
        r.stop()


def test_a_replica_answering_503_is_ejected_then_readmitted(own, router_cls, tmp_path,
                                                           model_zoo):
    broken, good = own["broken"], own["good"]
    r = router_cls({"services": [{"name": "iris", "variants": [
        {"name": "default", "weight": 1, "http": [broken.url, good.url]}],
        "upstream": {"eject_consecutive_failures": 2, "eject_seconds": 0.5,
                     "max_eject_seconds": 1, "retry_budget_min_per_second": 100}}]},
        tmp_path, grpc=False)
    try:
        assert httpx.post(f"{broken.url}/v2/models/iris/infer", json=IRIS).status_code == 503
        statuses = load(r.url, 40, path="/v2/models/iris/infer", body=IRIS, threads=2)
        assert statuses == [200] * 40  # 503s were retried on the good replica
        labels = {"service": "iris", "variant": "default"}
        assert r.sample("turnout_router_ejections_total", **labels, endpoint=broken.url) >= 1
        assert r.sample("turnout_router_retries_total", **labels) >= 1
        # the replica recovers: the model is repaired and loaded again
        shutil.copy(model_zoo["root"] / "iris" / "1" / "model.joblib",
                    own["broken_dir"] / "iris" / "1" / "model.joblib")
        assert httpx.post(f"{broken.url}/v2/repository/models/iris/load").status_code == 200
        before = count(broken, "iris")
        deadline = time.monotonic() + 10
        while count(broken, "iris") == before and time.monotonic() < deadline:
            assert load(r.url, 10, path="/v2/models/iris/infer", body=IRIS, threads=2) == [200] * 10
            time.sleep(0.2)
        assert count(broken, "iris") > before  # re-admitted and serving again
    finally:
        r.stop()


def test_connect_errors_are_retried_on_another_endpoint(upstreams, router_cls, tmp_path):
    from socket import socket

    with socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    r = router_cls({"services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [dead, upstreams["a1"].url]}]}],
        "upstream": {"health_check": {"enabled": False}}}, tmp_path, grpc=False)
    try:
        assert load(r.url, 30, threads=3) == [200] * 30
        labels = {"service": "m", "variant": "default"}
        assert r.sample("turnout_router_upstream_requests_total", **labels, endpoint=dead,
                        outcome="connect") >= 1
        assert r.sample("turnout_router_ejections_total", **labels, endpoint=dead) >= 1
    finally:
        r.stop()


def test_overload_beyond_the_pending_cap_gets_fast_429s(upstreams, router_cls, tmp_path):
    r = router_cls({"services": [{"name": "slow", "variants": [
        {"name": "default", "weight": 1, "http": [upstreams["a1"].url]}],
        "upstream": {"max_pending": 4, "timeout_seconds": 10}}]}, tmp_path, grpc=False)
    results: list[tuple[int, float, dict]] = []
    lock = threading.Lock()

    client = httpx.Client(limits=httpx.Limits(max_connections=24), timeout=30)
    client.get(f"{r.url}/v2/health/live")

    def one(_: int) -> None:
        started = time.perf_counter()
        resp = client.post(f"{r.url}/v2/models/slow/infer", json=SLOW)
        with lock:
            results.append((resp.status_code, time.perf_counter() - started,
                            {**resp.json(), "retry-after": resp.headers.get("retry-after")}))

    try:
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(one, range(24)))
        ok = [x for x in results if x[0] == 200]
        refused = [x for x in results if x[0] == 429]
        assert len(ok) + len(refused) == 24 and 1 <= len(ok) <= 8
        assert all("limit is 4" in body["error"] for _, _, body in refused)
        assert all(body["retry-after"] == "1" for _, _, body in refused)  # clients back off
        assert max(elapsed for _, elapsed, _ in refused) < 0.9  # not queued behind the 1 s model
        assert r.sample("turnout_router_overload_rejections_total", service="slow",
                        variant="default") == len(refused)
        assert httpx.post(f"{r.url}/v2/models/slow/infer", json=SLOW).status_code == 200
    finally:
        client.close()
        r.stop()


def test_per_request_timeout(upstreams, router_cls, tmp_path):
    r = router_cls({"services": [{"name": "slow", "variants": [
        {"name": "default", "weight": 1, "http": [upstreams["a1"].url]}],
        "upstream": {"timeout_seconds": 0.3}}]}, tmp_path, grpc=False)
    try:
        started = time.perf_counter()
        resp = httpx.post(f"{r.url}/v2/models/slow/infer", json=SLOW)
        assert time.perf_counter() - started < 0.9
        assert resp.status_code == 504 and "did not answer within" in resp.json()["error"]
    finally:
        r.stop()


def test_per_request_timeout_over_grpc_is_deadline_exceeded(upstreams, router_cls, tmp_path):
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    r = router_cls({"services": [{"name": "slow", "variants": [
        {"name": "default", "weight": 1, "grpc": [upstreams["a1"].grpc_url]}],
        "upstream": {"timeout_seconds": 0.3}}]}, tmp_path)
    try:
        client = tgrpc.InferenceServerClient(r.grpc_url)
        x = tgrpc.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.asarray([[1, 2]], dtype=np.float32))
        started = time.perf_counter()
        with pytest.raises(InferenceServerException) as err:
            client.infer("slow", [x])
        assert time.perf_counter() - started < 0.9
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "did not answer within 0." in err.value.message()
        client.close()
    finally:
        r.stop()


def test_reload_under_load_loses_nothing(upstreams, router_cls, tmp_path):
    a1, b = upstreams["a1"], upstreams["b"]

    def config(w_default: float, w_canary: float) -> dict:
        return {"services": [{"name": "m", "variants": [
            {"name": "default", "weight": w_default, "http": [a1.url]},
            {"name": "canary", "weight": w_canary, "http": [b.url]}]}]}

    r = router_cls(config(50, 50), tmp_path, grpc=False)
    statuses: list[int] = []
    worker = threading.Thread(target=lambda: statuses.extend(load(r.url, 600, threads=6)))
    try:
        worker.start()
        for step in range(8):
            resp = httpx.put(f"{r.admin}/services/m/weights",
                             json={"default": 10 * step + 1, "canary": 100 - 10 * step},
                             headers=r.admin_headers)
            assert resp.status_code == 200, resp.text
            time.sleep(0.05)
        import yaml

        r.config_path.write_text(yaml.safe_dump(config(90, 10)))
        assert httpx.post(f"{r.admin}/reload", headers=r.admin_headers).status_code == 200
        bad = httpx.put(f"{r.admin}/config", content=b"services: [{name: m}]", headers=r.admin_headers)
        assert bad.status_code == 400 and "variants" in bad.json()["error"]
        resp = httpx.put(f"{r.admin}/config", content=yaml.safe_dump(config(0, 1)).encode(),
                         headers=r.admin_headers)
        assert resp.status_code == 200
        worker.join(60)
        assert statuses == [200] * 600
        after = [httpx.post(f"{r.url}/v2/models/m/infer", json=BODY).json()["outputs"][0]["data"]
                 for _ in range(10)]
        assert all(y == [3.0, -4.0] for y in after)  # all on the doubling canary now
        in_force = httpx.get(f"{r.admin}/config", headers=r.admin_headers).json()
        assert in_force["services"][0]["variants"][0]["weight"] == 0
        assert r.sample("turnout_router_config_reloads_total", result="rejected") == 1
    finally:
        r.stop()


def test_admin_status_and_unknown_service(upstreams, router_cls, tmp_path):
    r = router_cls({"services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [upstreams["a1"].url]}]}]}, tmp_path, grpc=False)
    try:
        rows = httpx.get(f"{r.admin}/status", headers=r.admin_headers).json()["endpoints"]
        assert rows[0]["address"] == upstreams["a1"].url and rows[0]["healthy"] is True
        admin = httpx.Client(base_url=r.admin, headers=r.admin_headers)
        assert admin.put("/services/x/weights", json={}).status_code == 404
        assert admin.put("/services/m/weights", json={"zz": 1}).status_code == 400
        assert admin.put("/services/m/weights", json={"default": 0}).status_code == 400
    finally:
        r.stop()


def _slow_grpc_request(**fields) -> bytes:
    from serving.protocol import proto

    request = proto.ModelInferRequest(model_name="slow", **fields)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.asarray([[1, 2]], dtype=np.float32).tobytes())
    return request.SerializeToString()


def _concurrent_calls(infer, count: int, timeout: float) -> list[tuple[str, str, float]]:
    """``count`` ModelInfer calls of the slow model at once: (code, details, seconds to end)."""
    import grpc

    started = time.perf_counter()
    calls = [infer.future(_slow_grpc_request(), timeout=timeout) for _ in range(count)]
    finished: dict[int, float] = {}
    for index, call in enumerate(calls):
        call.add_done_callback(
            lambda _, index=index: finished.setdefault(index, time.perf_counter()))
    outcomes = []
    for index, call in enumerate(calls):
        try:
            call.result()
            code, details = "OK", ""
        except grpc.RpcError as err:
            code, details = err.code().name, err.details()
        outcomes.append((code, details, finished[index] - started))
    return outcomes


def test_grpc_overload_beyond_the_pending_cap_is_resource_exhausted_at_once(
        upstreams, router_cls, tmp_path):
    import grpc

    r = router_cls({"services": [{"name": "slow", "variants": [
        {"name": "default", "weight": 1, "grpc": [upstreams["a1"].grpc_url]}],
        "upstream": {"max_pending": 4, "timeout_seconds": 10}}]}, tmp_path, grpc_threads=16)
    channel = grpc.insecure_channel(r.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        outcomes = _concurrent_calls(infer, 12, timeout=10)
        for code, details, elapsed in outcomes:
            if code != "OK":
                assert code == "RESOURCE_EXHAUSTED" and "limit is 4" in details
                assert elapsed < 0.9  # refused before any answer
        refused = sum(code == "RESOURCE_EXHAUSTED" for code, _, _ in outcomes)
        assert 1 <= 12 - refused <= 4 + 1 and refused >= 7
        assert r.sample("turnout_router_overload_rejections_total", service="slow",
                        variant="default") == refused
        variant = r.server.router.table.services["slow"].variants["default"]
        assert variant.gate.pending == 0  # the handler threads gave every slot back
    finally:
        channel.close()
        r.stop()


def test_grpc_calls_beyond_the_loop_edges_bound_are_refused_at_once(upstreams, router_cls,
                                                                     tmp_path):
    """The default edge takes 16 x --grpc-threads calls at once; the next are refused at
    once with RESOURCE_EXHAUSTED, and the count goes back to zero as calls end."""
    import grpc

    # A variant with no endpoint yet: its calls are held (until the client's deadline), so
    # the first 16 stay in progress however slowly the 22 arrive.
    r = router_cls({"upstream": {"hold_seconds": 20, "max_held": 64}, "services": [
        {"name": "slow", "variants": [{"name": "default", "weight": 1, "grpc": []}]}]},
        tmp_path, grpc_threads=1)
    channel = grpc.insecure_channel(r.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        outcomes = _concurrent_calls(infer, 22, timeout=3.0)
        refused = [elapsed for code, details, elapsed in outcomes
                   if code == "RESOURCE_EXHAUSTED" and "16 gRPC calls in progress" in details]
        assert len(refused) == 22 - 16
        assert all(elapsed < 2.0 for elapsed in refused)  # at once, not at the deadline
        assert sorted({code for code, _, _ in outcomes}) == ["DEADLINE_EXCEEDED",
                                                            "RESOURCE_EXHAUSTED"]
        edge = r.server._loop_grpc._generic[0]
        deadline = time.monotonic() + 5
        while edge.calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert edge.max_calls == 16 and edge.calls == 0
    finally:
        channel.close()
        r.stop()


def test_grpc_calls_beyond_the_edge_queue_are_refused_by_grpcio(upstreams, router_cls,
                                                                 tmp_path):
    """Threaded edge: one handler thread queues at most 16 calls; the next ones are refused
    at once."""
    import grpc

    r = router_cls({"services": [{"name": "slow", "variants": [
        {"name": "default", "weight": 1, "grpc": [upstreams["a1"].grpc_url]}],
        "upstream": {"timeout_seconds": 0.3}}]}, tmp_path, grpc_threads=1,
        settings={"grpc_engine": "threaded"})
    channel = grpc.insecure_channel(r.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        outcomes = _concurrent_calls(infer, 22, timeout=1.0)
        codes = [code for code, _, _ in outcomes]
        assert all(elapsed < 0.5 for code, _, elapsed in outcomes if code == "RESOURCE_EXHAUSTED")
        assert codes.count("RESOURCE_EXHAUSTED") == 22 - 16
        assert "OK" not in codes  # the 1 s model never answers within 0.3 s
    finally:
        channel.close()
        r.stop()


def test_rest_and_grpc_at_once_leave_no_slot_or_outstanding_count_behind(
        upstreams, router_cls, tmp_path):
    """The event loop (REST) and the gRPC edge's threads update the same gate and endpoint
    counters; a lost update would leave a slot taken or skew power-of-two choices forever."""
    import grpc

    a1, a2 = upstreams["a1"], upstreams["a2"]
    r = router_cls({"services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url, a2.url],
         "grpc": [a1.grpc_url, a2.grpc_url]}]}]}, tmp_path, grpc_threads=16)
    from serving.protocol import proto

    request = proto.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.asarray([[1.5, -2.0]], dtype=np.float32).tobytes())
    message = request.SerializeToString()
    channel = grpc.insecure_channel(r.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    rest = httpx.Client(timeout=30)

    def grpc_calls(_: int) -> int:
        return sum(len(infer(message, timeout=30)) > 0 for _ in range(60))

    def rest_calls(_: int) -> int:
        return sum(rest.post(f"{r.url}/v2/models/m/infer", json=BODY).status_code == 200
                   for _ in range(60))

    try:
        with ThreadPoolExecutor(12) as pool:
            done = list(pool.map(grpc_calls, range(8))) + list(pool.map(rest_calls, range(4)))
        assert done == [60] * 12
        variant = r.server.router.table.services["m"].variants["default"]
        assert variant.gate.pending == 0
        assert [e.outstanding for e in variant.http.endpoints + variant.grpc.endpoints] == [0] * 4
        labels = {"service": "m", "variant": "default", "code": "OK"}
        assert r.sample("turnout_router_requests_total", **labels, protocol="grpc") == 480
        assert r.sample("turnout_router_requests_total", service="m", variant="default",
                        protocol="rest", code="200") == 240
    finally:
        rest.close()
        channel.close()
        r.stop()


def test_per_request_timeout_on_the_protobuf_http_hop_is_deadline_exceeded(
        upstreams, router_cls, tmp_path):
    import grpc

    a1 = upstreams["a1"]
    r = router_cls({"services": [{"name": "slow", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]}],
        "upstream": {"timeout_seconds": 0.3, "grpc_via_http": True}}]}, tmp_path)
    try:
        with grpc.insecure_channel(r.grpc_url) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                infer(_slow_grpc_request(), timeout=10)
            assert time.perf_counter() - started < 0.9
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the time left for the attempt: the 0.3 s budget less what the router spent before it
        within = re.search(r"did not answer within ([0-9.]+)s", err.value.details())
        assert within and 0.2 < float(within.group(1)) <= 0.3
        assert r.sample("turnout_router_upstream_requests_total", service="slow",
                        variant="default", endpoint=a1.url, outcome="timeout") == 1
    finally:
        r.stop()
