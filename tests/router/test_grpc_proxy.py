"""gRPC through the router: message-level forwarding (checked against a tiny grpc.aio upstream
that records what it receives) and end to end against real model servers with tritonclient."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from graph_spec import without_request_id
from tritonclient.utils import InferenceServerException

from serving.protocol import proto

X = np.asarray([[1.5, -2.0]], dtype=np.float32)


def within_binomial(count: int, n: int, p: float, z: float = 4.5) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


class RecordingUpstream:
    """A grpc.aio server on its own loop that answers ModelInfer with a fixed response and
    keeps the raw request bytes and metadata it received."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        outer = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                async def infer(request: bytes, context) -> bytes:
                    outer.requests.append((request, dict(context.invocation_metadata())))
                    message = proto.ModelInferRequest.FromString(request)
                    reply = proto.ModelInferResponse(model_name=message.model_name, id=message.id)
                    reply.outputs.add(name="y", datatype="FP32", shape=[1, 2])
                    reply.raw_output_contents.append(X.tobytes())
                    return reply.SerializeToString()
                return grpc.unary_unary_rpc_method_handler(infer)

        async def start() -> None:
            self.server = grpc.aio.server()
            self.server.add_generic_rpc_handlers((Handler(),))
            self.server.add_insecure_port(f"127.0.0.1:{port}")
            await self.server.start()
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_messages_are_forwarded_as_bytes_with_only_the_name_changed(router_cls, tmp_path,
                                                                    free_port_fn):
    port = free_port_fn()
    upstream = RecordingUpstream(port)
    r = router_cls({"services": [{"name": "svc", "variants": [
        {"name": "v1", "weight": 1, "model": "inner", "version": "3",
         "http": ["http://127.0.0.1:1"], "grpc": [f"127.0.0.1:{port}"]}],
        "upstream": {"health_check": {"enabled": False}}}]}, tmp_path)
    try:
        request = proto.ModelInferRequest(model_name="svc", id="req-1")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        tensor.parameters["binary"].bool_param = True
        request.raw_input_contents.append(X.tobytes())
        sent = request.SerializeToString()
        with grpc.insecure_channel(r.grpc_url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            answer, info = call.with_call(sent, metadata=(("x-user-id", "u1"),), timeout=5)
        got, metadata = upstream.requests[-1]
        assert got.startswith(sent)  # the original bytes, untouched, then the new fields
        parsed = proto.ModelInferRequest.FromString(got)
        assert (parsed.model_name, parsed.model_version, parsed.id) == ("inner", "3", "req-1")
        assert parsed.raw_input_contents[0] == X.tobytes()
        assert metadata["x-user-id"] == "u1"
        reply = proto.ModelInferResponse.FromString(answer)
        assert reply.model_name == "svc" and reply.raw_output_contents[0] == X.tobytes()
        assert ("x-turnout-variant", "v1") in info.trailing_metadata()
    finally:
        r.stop()
        upstream.stop()


ENGINES = ["loop", "threaded"]  # the default edge and grpcio's fallback answer alike


@pytest.fixture(scope="module", params=ENGINES)
def grpc_router(request, upstreams, router_cls, tmp_path_factory):
    a1, a2, b = upstreams["a1"], upstreams["a2"], upstreams["b"]
    r = router_cls({"services": [
        {"name": "m", "variants": [
            {"name": "default", "weight": 60, "http": [a1.url], "grpc": [a1.grpc_url, a2.grpc_url]},
            {"name": "canary", "weight": 40, "http": [b.url], "grpc": [b.grpc_url]}],
         "rules": [{"header": {"x-experiment": "b"}, "variant": "canary"}]},
        {"name": "iris", "variants": [
            {"name": "tree", "weight": 1, "model": "iris_tree", "http": [a1.url],
             "grpc": [a1.grpc_url]}]}]},
        tmp_path_factory.mktemp("grpc"), max_payload_bytes=64 * 1024,
        settings={"grpc_engine": request.param})
    yield r
    r.stop()


def infer(url: str, model: str = "m", data: np.ndarray = X, headers=None):
    client = tgrpc.InferenceServerClient(url)
    tensor = tgrpc.InferInput("x", list(data.shape), "FP32" if data.dtype == np.float32 else "FP64")
    tensor.set_data_from_numpy(data)
    try:
        return client.infer(model, [tensor], headers=headers)
    finally:
        client.close()


def test_tritonclient_grpc_gets_the_direct_answer(grpc_router, upstreams):
    direct = infer(upstreams["a1"].grpc_url, headers={}).as_numpy("y")
    via = infer(grpc_router.grpc_url, headers={"x-experiment": "none"}).as_numpy("y")
    assert np.array_equal(direct, X)
    assert np.array_equal(via, X) or np.array_equal(via, 2 * X)


def test_grpc_split_and_rules(grpc_router):
    client = tgrpc.InferenceServerClient(grpc_router.grpc_url)
    tensor = tgrpc.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(X)
    n = 200
    canary = sum(np.array_equal(client.infer("m", [tensor]).as_numpy("y"), 2 * X)
                 for _ in range(n))
    assert within_binomial(canary, n, 0.4), canary
    ruled = [client.infer("m", [tensor], headers={"x-experiment": "b"}).as_numpy("y")
             for _ in range(10)]
    assert all(np.array_equal(y, 2 * X) for y in ruled)
    client.close()


def test_grpc_renamed_model_and_metadata(grpc_router, model_zoo):
    rows = np.asarray([[0.3, -0.2, 1.4, 0.2], [2.0, 1.0, 0.1, -1.0]])
    result = infer(grpc_router.grpc_url, "iris", rows)
    assert result.get_response().model_name == "iris"
    assert result.as_numpy(result.get_response().outputs[0].name).tolist() == \
        model_zoo["iris_v1"].predict(rows).tolist()
    client = tgrpc.InferenceServerClient(grpc_router.grpc_url)
    assert client.get_model_metadata("iris").name == "iris"
    assert client.is_model_ready("iris") and client.is_server_live() and client.is_server_ready()
    client.close()


def test_grpc_errors_match_the_model_server(grpc_router, upstreams):
    for url in (grpc_router.grpc_url, upstreams["a1"].grpc_url):
        with pytest.raises(InferenceServerException) as info:
            infer(url, "nope")
        assert "NOT_FOUND" in str(info.value.status()) and "nope" in info.value.message()
    bad = np.zeros((1, 3), dtype=np.float32)
    messages = []
    for url in (grpc_router.grpc_url, upstreams["a1"].grpc_url):
        with pytest.raises(InferenceServerException) as info:
            infer(url, "m", bad, headers={"x-experiment": "none"})
        messages.append((info.value.status(), info.value.message()))
    assert "INVALID_ARGUMENT" in str(messages[0][0])
    assert messages[0] == messages[1]


def test_grpc_payload_limit_and_unproxied_rpcs(grpc_router):
    with pytest.raises(InferenceServerException) as info:
        infer(grpc_router.grpc_url, "m", np.zeros((1, 40000), dtype=np.float32))
    assert "RESOURCE_EXHAUSTED" in str(info.value.status())
    client = tgrpc.InferenceServerClient(grpc_router.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.get_model_repository_index()
    assert "UNIMPLEMENTED" in str(info.value.status())
    client.close()


def _wait_compared(r, count: int) -> dict[str, str]:
    """Wait (bounded) until ``count`` shadow copies of m to twice were compared."""
    labels = {"service": "m", "variant": "twice"}
    deadline = time.monotonic() + 10
    while r.sample("turnout_router_shadow_requests_total", **labels,
                   outcome="compared") < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return labels


def test_grpc_shadow_is_compared(upstreams, router_cls, tmp_path):
    a1, b = upstreams["a1"], upstreams["b"]
    r = router_cls({"services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]},
        {"name": "twice", "weight": 0, "http": [b.url], "grpc": [b.grpc_url]}],
        "mirror": {"variant": "twice"}}]}, tmp_path)
    try:
        for _ in range(5):
            assert np.array_equal(infer(r.grpc_url).as_numpy("y"), X)
        labels = _wait_compared(r, 5)
        assert r.sample("turnout_router_shadow_abs_difference_total", **labels) == \
            pytest.approx(5 * 3.5)
    finally:
        r.stop()


def _rest_proto_count(upstream, model: str) -> float:
    total = 0.0
    for line in httpx.get(f"{upstream.url}/metrics").text.splitlines():
        if line.startswith("turnout_requests_total{") and f'model="{model}"' in line \
                and 'protocol="rest-proto"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module", params=ENGINES)
def via_http_router(request, upstreams, router_cls, tmp_path_factory):
    """gRPC clients' ModelInfer forwarded as protobuf over HTTP (upstream.grpc_via_http)."""
    a1, b = upstreams["a1"], upstreams["b"]
    r = router_cls({"upstream": {"grpc_via_http": True}, "services": [
        {"name": "m", "variants": [
            {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]},
            {"name": "canary", "weight": 0, "http": [b.url], "grpc": [b.grpc_url]}],
         "rules": [{"header": {"x-experiment": "b"}, "variant": "canary"}]},
        {"name": "iris", "variants": [
            {"name": "tree", "weight": 1, "model": "iris_tree", "version": "1",
             "http": [a1.url], "grpc": [a1.grpc_url]}]},
        {"name": "grpc_only", "variants": [
            {"name": "default", "weight": 1, "model": "m", "grpc": [a1.grpc_url]}]},
        {"name": "failing", "variants": [
            {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]}]}]},
        tmp_path_factory.mktemp("via-http"), settings={"grpc_engine": request.param})
    yield r
    r.stop()


def _infer_message(model: str, rows: np.ndarray, request_id: str = "") -> bytes:
    request = proto.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32" if rows.dtype == np.float32 else "FP64",
                       shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())
    return request.SerializeToString()


def test_grpc_via_http_answers_the_bytes_a_direct_grpc_call_gets(via_http_router, upstreams,
                                                                 model_zoo):
    a1 = upstreams["a1"]
    rows = np.asarray([[0.3, -0.2, 1.4, 0.2], [2.0, 1.0, 0.1, -1.0]])
    before = _rest_proto_count(a1, "iris_tree")
    with grpc.insecure_channel(via_http_router.grpc_url) as via, \
            grpc.insecure_channel(a1.grpc_url) as direct:
        call = via.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        # h2load sends its HTTP/2 content-length as metadata: it must not reach HTTP/1.1
        answer, info = call.with_call(_infer_message("iris", rows, "id-7"), timeout=5,
                                      metadata=(("content-length", "999"),))
        expected = direct.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            _infer_message("iris_tree", rows, "id-7"))
    reply, wanted = (proto.ModelInferResponse.FromString(b) for b in (answer, expected))
    assert reply.model_name == "iris" and wanted.model_name == "iris_tree"
    reply.model_name = "iris_tree"
    assert reply == wanted and reply.id == "id-7" and reply.model_version == "1"
    assert ("x-turnout-variant", "tree") in info.trailing_metadata()
    assert _rest_proto_count(a1, "iris_tree") == before + 1  # it did take the HTTP path
    result = infer(via_http_router.grpc_url, "iris", rows)  # tritonclient, end to end
    assert result.as_numpy(result.get_response().outputs[0].name).tolist() == \
        model_zoo["iris_v1"].predict(rows).tolist()


def test_grpc_via_http_keeps_rules_and_falls_back_to_grpc_without_rest_endpoints(
        via_http_router, upstreams):
    b, a1 = upstreams["b"], upstreams["a1"]
    before_b, before_a = _rest_proto_count(b, "m"), _rest_proto_count(a1, "m")
    assert np.array_equal(infer(via_http_router.grpc_url, "m", X,
                                headers={"x-experiment": "b"}).as_numpy("y"), 2 * X)
    assert _rest_proto_count(b, "m") == before_b + 1
    assert np.array_equal(infer(via_http_router.grpc_url, "grpc_only", X).as_numpy("y"), X)
    assert _rest_proto_count(a1, "m") == before_a  # no REST endpoint: it went over gRPC


def test_grpc_via_http_errors_match_the_model_server(via_http_router, upstreams):
    for model, data, code in (("m", np.zeros((1, 3), dtype=np.float32), "INVALID_ARGUMENT"),
                              ("failing", X, "INTERNAL")):
        messages = []
        for url in (via_http_router.grpc_url, upstreams["a1"].grpc_url):
            with pytest.raises(InferenceServerException) as info:
                infer(url, model, data)
            messages.append((info.value.status(), without_request_id(info.value.message())))
        assert messages[0] == messages[1] and code in str(messages[0][0]), model
    inner = b"\x0a\x01x" + b"\x12\x02\xff\xfe"  # a message the server cannot decode
    message = b"\x0a\x01m" + b"\x2a" + bytes([len(inner)]) + inner
    answers = []
    for url in (via_http_router.grpc_url, upstreams["a1"].grpc_url):
        with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(message, timeout=5)
        answers.append((info.value.code(), info.value.details()))
    assert answers[0] == answers[1] and answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_via_http_retries_a_dead_endpoint_on_another(upstreams, router_cls, tmp_path,
                                                          free_port_fn):
    a1 = upstreams["a1"]
    dead = f"http://127.0.0.1:{free_port_fn()}"
    r = router_cls({"upstream": {"grpc_via_http": True, "health_check": {"enabled": False}},
                    "services": [{"name": "m", "variants": [
                        {"name": "default", "weight": 1, "http": [dead, a1.url],
                         "grpc": [a1.grpc_url]}]}]}, tmp_path)
    try:
        for _ in range(10):
            assert np.array_equal(infer(r.grpc_url, "m", X).as_numpy("y"), X)
        assert r.sample("turnout_router_upstream_requests_total", service="m",
                        variant="default", endpoint=dead, outcome="connect") >= 1
        assert r.sample("turnout_router_upstream_requests_total", service="m",
                        variant="default", endpoint=a1.url, outcome="200") == 10
    finally:
        r.stop()


class _ForeignRest:
    """An HTTP server that is ready but is not a Turnout model server (no protobuf extension),
    and fails any inference sent to it, so a call that took the HTTP hop would show."""

    def __init__(self, port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"name":"other","extensions":["binary_tensor_data"]}' \
                    if self.path == "/v2" else b'{"ready":true}'
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.shutdown()


def test_grpc_via_http_auto_takes_the_http_hop_only_to_servers_that_offer_it(
        upstreams, router_cls, tmp_path, free_port_fn):
    a1 = upstreams["a1"]
    foreign = _ForeignRest(free_port_fn())
    r = router_cls({"upstream": {"health_check": {"interval_seconds": 0.2}}, "services": [
        {"name": "m", "variants": [
            {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]}]},
        {"name": "other", "variants": [
            {"name": "default", "weight": 1, "model": "m", "http": [foreign.url],
             "grpc": [a1.grpc_url]}]}]}, tmp_path)
    try:
        table = r.server.router.table
        turnout_ep = table.services["m"].variants["default"].http.endpoints[0]
        foreign_ep = table.services["other"].variants["default"].http.endpoints[0]
        deadline = time.monotonic() + 10
        while (turnout_ep.speaks_protobuf is None or foreign_ep.speaks_protobuf is None) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (turnout_ep.speaks_protobuf, foreign_ep.speaks_protobuf) == (True, False)
        before = _rest_proto_count(a1, "m")
        assert np.array_equal(infer(r.grpc_url, "m", X).as_numpy("y"), X)
        assert _rest_proto_count(a1, "m") == before + 1  # the HTTP hop
        assert np.array_equal(infer(r.grpc_url, "other", X).as_numpy("y"), X)  # the gRPC hop
        assert _rest_proto_count(a1, "m") == before + 1
    finally:
        r.stop()
        foreign.stop()


def test_grpc_shadow_copies_take_the_protobuf_hop_to_a_rest_only_shadow(upstreams, router_cls,
                                                                        tmp_path):
    a1, b = upstreams["a1"], upstreams["b"]
    r = router_cls({"upstream": {"grpc_via_http": True}, "services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]},
        {"name": "twice", "weight": 0, "http": [b.url]}],
        "mirror": {"variant": "twice"}}]}, tmp_path)
    try:
        before = _rest_proto_count(b, "m")
        for _ in range(4):
            assert np.array_equal(infer(r.grpc_url).as_numpy("y"), X)
        labels = _wait_compared(r, 4)
        assert r.sample("turnout_router_shadow_abs_difference_total", **labels) == \
            pytest.approx(4 * 3.5)
        assert _rest_proto_count(b, "m") == before + 4
    finally:
        r.stop()
