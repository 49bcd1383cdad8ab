"""Requests held while their variant has no ready endpoint (router/hold.py), against a real
router on loopback and real model servers: released by a config pushed through the admin API
or by an endpoint passing its health check again, bounded in time and count with answers
clients retry (503 + Retry-After, UNAVAILABLE), counted in metrics and ``GET /status`` while
they wait, and let go when the client leaves."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from serving.protocol import proto
from tests.native_support import weakly_referenced_compiled

X = [[1.5, -2.0]]
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
INFER = "/inference.GRPCInferenceService/ModelInfer"


def routes(*, hold: float = 20.0, max_held: int | None = None, http: list[str] | None = None,
           grpc_: list[str] | None = None, extra_services: list[dict] | None = None,
           **upstream: Any) -> dict:
    """Service ``m`` with one variant, ``default``: no endpoints unless given."""
    up: dict[str, Any] = {"hold_seconds": hold, "health_check": {"interval_seconds": 0.2},
                          **upstream}
    if max_held is not None:
        up["max_held"] = max_held
    return {"upstream": up, "services": [
        {"name": "m", "variants": [{"name": "default", "weight": 1, "http": http or [],
                                    "grpc": grpc_ or []}]},
        *(extra_services or [])]}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def status_rows(r, service: str = "m", variant: str = "default") -> list[dict]:
    rows = httpx.get(f"{r.admin}/status", timeout=5, headers=r.admin_headers).json()["endpoints"]
    return [row for row in rows if row["service"] == service and row["variant"] == variant]


def held(r, service: str = "m", variant: str = "default") -> int:
    """Held requests as ``GET /status`` reports them (every row of the variant agrees)."""
    counts = {row["held"] for row in status_rows(r, service, variant)}
    assert len(counts) == 1, counts
    return counts.pop()


def gauge(r, service: str = "m", variant: str = "default") -> float:
    return r.sample("turnout_router_held_requests", service=service, variant=variant)


def ended(r, outcome: str, service: str = "m", variant: str = "default") -> float:
    return r.sample("turnout_router_held_total", service=service, variant=variant, outcome=outcome)


def push(r, config: dict) -> None:
    answer = httpx.put(f"{r.admin}/config", content=json.dumps(config), timeout=10,
                       headers=r.admin_headers)
    assert answer.status_code == 200, answer.text


def infer_message(model: str = "m") -> bytes:
    request = proto.ModelInferRequest(model_name=model, id="held")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.asarray(X, dtype=np.float32).tobytes())
    return request.SerializeToString()


def grpc_infer(r, model: str = "m", timeout: float = 30) -> proto.ModelInferResponse:
    with grpc.insecure_channel(r.grpc_url) as channel:
        answer = channel.unary_unary(INFER)(infer_message(model), timeout=timeout)
    return proto.ModelInferResponse.FromString(answer)


def post(r, path: str = "/v2/models/m/infer", body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(r.url + path, json=BODY if body is None else body, timeout=30, **kw)


# -- released -------------------------------------------------------------------------------

def test_rest_v2_and_v1_wait_for_a_config_that_lists_an_endpoint(upstreams, start_router):
    r = start_router(routes())
    a1 = upstreams["a1"]
    row, = status_rows(r)  # a variant without endpoints still has its row
    assert (row["protocol"], row["address"], row["pending"], row["held"]) == (None, None, 0, 0)
    with ThreadPoolExecutor(2) as pool:
        v2 = pool.submit(post, r)
        v1 = pool.submit(post, r, "/v1/models/m:predict", {"instances": X})
        wait_for(lambda: held(r) == 2, "two requests held")
        assert gauge(r) == 2 and not v2.done() and not v1.done()
        time.sleep(0.3)  # held: nothing answers them meanwhile
        assert not v2.done() and not v1.done()
        push(r, routes(http=[a1.url]))
        v2_answer, v1_answer = v2.result(10), v1.result(10)
    assert v2_answer.status_code == 200, v2_answer.text
    assert v2_answer.json() == httpx.post(f"{a1.url}/v2/models/m/infer", json=BODY).json()
    assert v2_answer.headers["x-turnout-variant"] == "default"
    assert v1_answer.status_code == 200 and v1_answer.json()["predictions"] == X
    assert held(r) == 0 and gauge(r) == 0 and ended(r, "released") == 2
    row, = status_rows(r)
    assert row["address"] == a1.url and row["held"] == 0


def test_grpc_waits_for_a_config_that_lists_an_endpoint(upstreams, start_router):
    r = start_router(routes())
    a1 = upstreams["a1"]
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(grpc_infer, r)
        wait_for(lambda: held(r) == 1, "the gRPC call held")
        assert gauge(r) == 1
        push(r, routes(http=[a1.url], grpc_=[a1.grpc_url]))
        answer = call.result(10)
    assert answer.model_name == "m" and answer.id == "held"
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == X[0]
    assert gauge(r) == 0 and ended(r, "released") == 1
    assert r.sample("turnout_router_requests_total", service="m", variant="default",
                    protocol="grpc", code="OK") == 1


def test_grpc_via_http_waits_and_takes_the_rest_endpoint(upstreams, start_router):
    r = start_router(routes(grpc_via_http=True))
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(grpc_infer, r)
        wait_for(lambda: held(r) == 1, "the gRPC call held")
        push(r, routes(http=[upstreams["a1"].url], grpc_via_http=True))
        answer = call.result(10)
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == X[0]


def test_a_held_request_whose_variant_leaves_the_routes_is_routed_afresh(upstreams, start_router):
    a1 = upstreams["a1"]
    config = {"upstream": {"hold_seconds": 20}, "services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url]},
        {"name": "canary", "weight": 0}],
        "rules": [{"header": {"x-exp": "b"}, "variant": "canary"}]}]}
    r = start_router(config)
    assert post(r).headers["x-turnout-variant"] == "default"  # not held: default has endpoints
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(post, r, headers={"x-exp": "b"})
        wait_for(lambda: held(r, "m", "canary") == 1, "held for the canary")
        assert held(r, "m", "default") == 0
        push(r, {"upstream": {"hold_seconds": 20}, "services": [{"name": "m", "variants": [
            {"name": "default", "weight": 1, "http": [a1.url]}]}]})
        answer = call.result(10)
    assert answer.status_code == 200 and answer.headers["x-turnout-variant"] == "default"
    assert gauge(r, "m", "canary") == 0 and gauge(r, "m", "default") == 0
    assert ended(r, "released", "m", "default") == 1


class Switchable:
    """A model server stand-in whose readiness the test sets: ``/v2/health/ready`` answers 200
    or 503, and inference answers a fixed V2 body."""

    ANSWER = b'{"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[7]}]}'

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.ready = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v2/health/ready":
                    self._send(200 if outer.ready else 503, b"{}")
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._send(200, outer.ANSWER)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_variant_whose_endpoints_fail_their_checks_holds_until_one_passes(start_router):
    server = Switchable()
    try:
        r = start_router(routes(http=[server.url], health_check={
            "interval_seconds": 0.1, "unhealthy_threshold": 1, "healthy_threshold": 1}))
        wait_for(lambda: status_rows(r)[0]["healthy"] is False, "the endpoint failing its check")
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(post, r)
            wait_for(lambda: held(r) == 1, "held while the only endpoint is unhealthy")
            server.ready = True
            answer = call.result(10)
        assert answer.status_code == 200 and answer.content == Switchable.ANSWER
        assert ended(r, "released") == 1 and gauge(r) == 0
    finally:
        server.stop()


def test_without_hold_seconds_unhealthy_endpoints_are_still_tried_at_once(start_router):
    server = Switchable()
    try:
        r = start_router(routes(hold=0, http=[server.url], health_check={
            "interval_seconds": 0.1, "unhealthy_threshold": 1, "healthy_threshold": 1}))
        wait_for(lambda: status_rows(r)[0]["healthy"] is False, "the endpoint failing its check")
        answer = post(r)  # panic mode, as before holding existed: not held
        assert answer.status_code == 200 and held(r) == 0
        assert ended(r, "released") == ended(r, "timeout") == 0
    finally:
        server.stop()


def test_a_graph_step_waits_for_its_service(upstreams, start_router):
    graph = {"name": "g", "nodes": {"root": {"routerType": "Sequence",
                                             "steps": [{"serviceName": "m"}]}}}
    r = start_router({**routes(), "graphs": [graph]})
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(post, r, "/v2/models/g/infer")
        wait_for(lambda: held(r) == 1, "the graph's step held")
        push(r, {**routes(http=[upstreams["a1"].url]), "graphs": [graph]})
        answer = call.result(10)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == X[0]
    with ThreadPoolExecutor(1) as pool:  # over gRPC, once the service is at zero again
        push(r, {**routes(), "graphs": [graph]})
        call = pool.submit(grpc_infer, r, "g")
        wait_for(lambda: held(r) == 1, "the gRPC graph's step held")
        push(r, {**routes(http=[upstreams["a1"].url], grpc_=[upstreams["a1"].grpc_url]),
                 "graphs": [graph]})
        grpc_answer = call.result(10)
    assert grpc_answer.model_name == "g"
    assert np.frombuffer(grpc_answer.raw_output_contents[0], np.float32).tolist() == X[0]
    assert ended(r, "released") == 2


# -- bounded --------------------------------------------------------------------------------

def test_past_hold_seconds_rest_gets_503_with_retry_after_and_grpc_unavailable(start_router):
    r = start_router(routes(hold=0.5))
    started = time.monotonic()
    answer = post(r)
    waited = time.monotonic() - started
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert 0.45 <= waited < 5
    assert "became ready within 0.5 s" in answer.json()["error"]
    v1 = post(r, "/v1/models/m:predict", {"instances": X})
    assert v1.status_code == 503 and v1.headers["retry-after"] == "1"
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(r)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "hold_seconds" in info.value.details()
    assert ended(r, "timeout") == 3 and gauge(r) == 0 and held(r) == 0
    assert r.sample("turnout_router_requests_total", service="m", variant="default",
                    protocol="rest", code="503") == 1


def test_the_grpc_deadline_bounds_the_hold(start_router):
    r = start_router(routes(hold=30))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        grpc_infer(r, timeout=0.5)
    # the router's answer at the deadline, or the client's own expiry: never a late answer
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    wait_for(lambda: held(r) == 0, "the hold to end with the call")
    assert time.monotonic() - started < 5


def test_over_max_held_the_next_request_gets_503_at_once(upstreams, start_router):
    r = start_router(routes(max_held=1))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, r)
        wait_for(lambda: held(r) == 1, "the first request held")
        started = time.monotonic()
        over = post(r)
        with pytest.raises(grpc.RpcError) as info:
            grpc_infer(r)
        assert time.monotonic() - started < 2  # at once, not after hold_seconds
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert "max_held 1" in over.json()["error"]
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "max_held" in info.value.details()
        assert ended(r, "overflow") == 2 and held(r) == 1
        push(r, routes(max_held=1, http=[upstreams["a1"].url]))
        assert first.result(10).status_code == 200


def test_held_grpc_calls_hold_no_thread_on_the_loop_engine(upstreams, start_router):
    """The default edge: held calls wait on the loop, so holding many takes nothing from
    other calls (the threaded edge lets only half its threads hold)."""
    a1 = upstreams["a1"]
    live = {"name": "live", "variants": [{"name": "default", "weight": 1, "model": "m",
                                          "http": [a1.url], "grpc": [a1.grpc_url]}]}
    r = start_router(routes(extra_services=[live]), grpc_threads=1)
    with ThreadPoolExecutor(4) as pool:
        held_calls = [pool.submit(grpc_infer, r) for _ in range(4)]
        wait_for(lambda: held(r) == 4, "four gRPC calls held")
        assert grpc_infer(r, "live").model_name == "live"
        push(r, routes(http=[a1.url], grpc_=[a1.grpc_url], extra_services=[live]))
        assert [call.result(10).model_name for call in held_calls] == ["m"] * 4
    assert held(r) == 0


def test_held_grpc_calls_leave_half_the_threads_to_other_calls(upstreams, start_router):
    a1 = upstreams["a1"]
    live = {"name": "live", "variants": [{"name": "default", "weight": 1, "model": "m",
                                          "http": [a1.url], "grpc": [a1.grpc_url]}]}
    r = start_router(routes(extra_services=[live]), grpc_threads=2,  # one thread may hold
                     settings={"grpc_engine": "threaded"})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(grpc_infer, r)
        wait_for(lambda: held(r) == 1, "one gRPC call held")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            grpc_infer(r)
        assert time.monotonic() - started < 2
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "gRPC threads" in info.value.details()
        assert grpc_infer(r, "live").model_name == "live"  # the free thread serves others
        push(r, routes(http=[a1.url], grpc_=[a1.grpc_url], extra_services=[live]))
        assert first.result(10).model_name == "m"


# -- clients that leave ---------------------------------------------------------------------

def _raw_post(r, path: str) -> socket.socket:
    body = json.dumps(BODY).encode()
    sock = socket.create_connection(("127.0.0.1", r.http_port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
    return sock


@pytest.mark.parametrize("path", ["/v2/models/m/infer",  # claimed by the fast path
                                  "/v2/models/m/infer?trace=1"])  # uvicorn's ASGI path
def test_a_rest_client_that_disconnects_is_no_longer_held(start_router, path):
    r = start_router(routes())
    sock = _raw_post(r, path)
    try:
        wait_for(lambda: held(r) == 1, "the request held")
        # the held request watches its connection without a weak reference to the protocol
        assert weakly_referenced_compiled() == []
    finally:
        sock.close()
    wait_for(lambda: held(r) == 0, "the held count back down")
    assert gauge(r) == 0 and ended(r, "cancelled") == 1


def test_a_grpc_call_cancelled_while_held_is_no_longer_held(start_router):
    r = start_router(routes())
    with grpc.insecure_channel(r.grpc_url) as channel:
        future = channel.unary_unary(INFER).future(infer_message(), timeout=30)
        wait_for(lambda: held(r) == 1, "the call held")
        future.cancel()
        wait_for(lambda: held(r) == 0, "the held count back down")
    assert gauge(r) == 0 and ended(r, "cancelled") == 1


def test_stopping_the_router_answers_held_requests_at_once(router_cls, tmp_path):
    r = router_cls(routes(hold=60), tmp_path)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(post, r)
        wait_for(lambda: held(r) == 1, "the request held")
        started = time.monotonic()
        r.stop()
        answer = call.result(10)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert time.monotonic() - started < 5


# -- shadows are never held -----------------------------------------------------------------

def test_a_copy_to_a_shadow_without_endpoints_is_dropped_and_counted(upstreams, start_router):
    a1 = upstreams["a1"]
    r = start_router({"upstream": {"hold_seconds": 20}, "services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]},
        {"name": "shadow", "weight": 0}], "mirror": {"variant": "shadow"}}]})
    started = time.monotonic()
    assert post(r).status_code == 200
    assert grpc_infer(r).model_name == "m"
    assert time.monotonic() - started < 5
    assert r.sample("turnout_router_shadow_requests_total", service="m", variant="shadow",
                    outcome="dropped") == 2
    assert r.sample("turnout_router_shadow_requests_total", service="m", variant="shadow",
                    outcome="sent") == 0
    assert held(r, "m", "shadow") == 0 and ended(r, "overflow", "m", "shadow") == 0
