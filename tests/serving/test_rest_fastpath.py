"""Inference requests are claimed by serving/rest/fastpath.py: answered inside the HTTP
protocol callbacks (inline models) or from one task (batched and thread-pool models), without an
ASGI cycle; everything else goes through uvicorn's. Both paths must give the same answers, and
the fast one must keep HTTP's rules: pipelining order (across claimed and unclaimed requests),
keep-alive, Connection: close, the payload limit, request ids and metrics."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from serving.server.dataplane import DataPlane
from serving.server.metrics import Metrics
from serving.server.repository import ModelRepository
from serving.server.rest import build_rest_app
from serving.transport.fastpath import bind_protocol


def _mlp(model_zoo, x: np.ndarray) -> np.ndarray:
    w1, w2 = model_zoo["mlp"]
    logits = np.maximum(x @ w1, 0) @ w2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _body(x: np.ndarray) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                     "data": x.ravel().tolist()}]})


def _request(path: str, body: bytes, *, extra: str = "", version: str = "1.1",
             chunked: bool = False) -> bytes:
    if chunked:  # no Content-Length: the request takes uvicorn's ASGI path
        head = (f"POST {path} HTTP/{version}\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                f"{extra}\r\n")
        return head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = f"POST {path} HTTP/{version}\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def _read_response(stream) -> tuple[int, dict[str, str], bytes]:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def _exchange(url: str, payload: bytes, responses: int, *, wait_close: float = 0.0
              ) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Send raw bytes on one connection; read ``responses`` answers; report whether the
    server closed the connection within ``wait_close`` seconds afterwards."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        stream = sock.makefile("rb")
        answers = [_read_response(stream) for _ in range(responses)]
        closed = False
        if wait_close:
            sock.settimeout(wait_close)
            try:
                closed = stream.read(1) == b""
            except TimeoutError:
                pass
    return answers, closed


def test_fast_and_asgi_paths_give_identical_answers(server, model_zoo):
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    cases = [("/v2/models/mlp/infer", _body(x)),
             ("/v2/models/mlp/infer", _body(x[:, :5])),            # 400: wrong feature count
             ("/v2/models/mlp/infer", b"{not json"),               # 400: malformed
             ("/v2/models/nope/infer", _body(x)),                  # 404
             ("/v1/models/mlp:predict", orjson.dumps({"instances": x.tolist()})),
             # batched: answered from the batch future's callback (no task)
             ("/v2/models/mlp_batched/infer", _body(x)),
             ("/v2/models/mlp_batched/infer", _body(x[:, :5])),    # 400, refused at once
             ("/v2/models/mlp_batched/infer", b"{not json"),
             ("/v1/models/mlp_batched:predict", orjson.dumps({"instances": x.tolist()}))]
    for path, body in cases:
        (fast,), _ = _exchange(server.url, _request(path, body), 1)
        (slow,), _ = _exchange(server.url, _request(path, body, chunked=True), 1)
        assert fast[0] == slow[0] and fast[2] == slow[2], (path, fast, slow)
        assert fast[1]["content-type"] == slow[1]["content-type"]
    for case in (cases[0], cases[5]):
        (ok,), _ = _exchange(server.url, _request(*case), 1)
        out = orjson.loads(ok[2])["outputs"][0]
        np.testing.assert_allclose(np.array(out["data"]).reshape(3, 3), _mlp(model_zoo, x),
                                   rtol=1e-5)


def test_pipelined_requests_are_answered_in_order(server, model_zoo):
    """A fast-path request behind a slow one (thread pool) and a batched one must wait its
    turn: responses leave in request order, each with its own outputs."""
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(4)]
    slow = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                     "data": [1, 2]}]})
    payload = b"".join([
        _request("/v2/models/mlp/infer", _body(xs[0])),
        _request("/v2/models/slow/infer", slow),
        _request("/v2/models/mlp/infer", _body(xs[1])),
        _request("/v2/models/mlp_batched/infer", _body(xs[2])),
        _request("/v2/models/mlp/infer", _body(xs[3]))])
    answers, closed = _exchange(server.url, payload, 5, wait_close=0.3)
    assert [a[0] for a in answers] == [200] * 5 and not closed
    assert orjson.loads(answers[1][2])["model_name"] == "slow"
    for answer, x in zip([answers[0], answers[2], answers[3], answers[4]], xs, strict=True):
        data = orjson.loads(answer[2])["outputs"][0]["data"]
        np.testing.assert_allclose(np.array(data).reshape(1, 3), _mlp(model_zoo, x), rtol=1e-5)


def test_unclaimed_requests_pipelined_between_claimed_ones_keep_their_place(server, model_zoo):
    """uvicorn's own requests (metadata GET, a chunked POST) queued behind a claimed request
    still being answered, and claimed ones behind those, all leave in order."""
    x = np.full((1, 8), 0.25, np.float32)
    slow = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                     "data": [1, 2]}]})
    payload = b"".join([
        _request("/v2/models/slow/infer", slow),                      # claimed, awaits 1 s
        _request("/v2/models/mlp/infer", _body(x)),                   # claimed, waits its turn
        b"GET /v2/models/mlp HTTP/1.1\r\nhost: x\r\n\r\n",            # uvicorn's
        _request("/v2/models/mlp/infer", _body(x), chunked=True),     # uvicorn's
        _request("/v2/models/mlp_batched/infer", _body(x)),           # claimable, behind uvicorn's
        _request("/v2/models/mlp/infer", _body(x))])
    answers, closed = _exchange(server.url, payload, 6, wait_close=0.3)
    assert [a[0] for a in answers] == [200] * 6 and not closed
    docs = [orjson.loads(a[2]) for a in answers]
    assert docs[0]["model_name"] == "slow"
    assert docs[2]["name"] == "mlp" and "inputs" in docs[2]  # the metadata answer, in place
    expected = _mlp(model_zoo, x)
    for doc in (docs[1], docs[3], docs[4], docs[5]):
        np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]).reshape(1, 3), expected,
                                   rtol=1e-5)
    assert docs[4]["model_name"] == "mlp_batched"


def test_keep_alive_close_and_http_1_0(server):
    x = np.ones((1, 8), np.float32)
    body = _body(x)
    answers, closed = _exchange(server.url, _request("/v2/models/mlp/infer", body) * 3, 3,
                                wait_close=0.3)
    assert [a[0] for a in answers] == [200] * 3 and not closed
    assert all("connection" not in a[1] for a in answers)
    for extra, version in (("connection: close\r\n", "1.1"), ("", "1.0")):
        (answer,), closed = _exchange(server.url, _request("/v2/models/mlp/infer", body,
                                                           extra=extra, version=version), 1,
                                    wait_close=5)
        assert answer[0] == 200 and answer[1]["connection"] == "close" and closed


def test_request_id_payload_limit_and_metrics(server):
    def successes() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "turnout_requests_total" and s.labels["model"] == "mlp"
                   and s.labels["protocol"] == "rest" and s.labels["status"] == "success")

    before = successes()
    body = _body(np.zeros((1, 8), np.float32))
    answers, _ = _exchange(server.url, _request("/v2/models/mlp/infer", body,
                                                extra="x-request-id: abc-123\r\n") * 4, 4)
    assert all(a[0] == 200 and a[1]["x-request-id"] == "abc-123" for a in answers)
    assert successes() == before + 4
    for batched_body, status in ((body, 200), (b"{not json", 400)):  # answered later / at once
        (answer,), _ = _exchange(server.url, _request("/v2/models/mlp_batched/infer",
                                                      batched_body, extra="x-request-id: b-7\r\n"),
                                 1)
        assert answer[0] == status and answer[1]["x-request-id"] == "b-7"
    big = b" " * (1 << 20) + body  # valid JSON, one byte over the server's 1 MiB limit
    (answer,), _ = _exchange(server.url, _request("/v2/models/mlp/infer", big), 1)
    assert answer[0] == 413 and "limit" in orjson.loads(answer[2])["error"]


def test_expect_100_continue_still_works(server):
    body = _body(np.zeros((1, 8), np.float32))
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-length: "
                     f"{len(body)}\r\nexpect: 100-continue\r\n\r\n".encode())
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"HTTP/1.1 100")
        assert stream.readline() == b"\r\n"
        sock.sendall(body)
        status, _, answer = _read_response(stream)
    assert status == 200 and orjson.loads(answer)["model_name"] == "mlp"


class _Transport:
    """Records writes; enough of a transport for uvicorn's protocol."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(
            name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0


async def _in_process(model_zoo, model: str) -> tuple:
    """The model server's REST protocol for one model, on an in-process transport: (protocol,
    transport, server state, metrics)."""
    metrics = Metrics(CollectorRegistry())
    repository = ModelRepository(path=model_zoo["root"] / model, name=model, metrics=metrics)
    await repository.load_all()
    dataplane = DataPlane(repository=repository, metrics=metrics, executor=ThreadPoolExecutor(1))
    dataplane.started = True
    app = build_rest_app(dataplane, registry=metrics.registry, max_payload_bytes=1 << 20)
    config = uvicorn.Config(app, http=bind_protocol(app), lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport, state, metrics


def test_a_client_gone_before_its_batch_is_answered_leaves_nothing_behind(model_zoo, caplog):
    """The batched request's answer comes after the client left: nothing is written, nothing
    raised, the request is counted and no longer in flight, its future leaves the tasks."""

    async def run() -> tuple[list[bytes], ServerState, Metrics]:
        protocol, transport, state, metrics = await _in_process(model_zoo, "mlp_batched")
        protocol.data_received(_request("/v2/models/mlp_batched/infer",
                                        _body(np.ones((1, 8), np.float32))))
        assert len(state.tasks) == 1  # the batch's future, not yet answered
        transport.closed = True
        protocol.connection_lost(None)
        for _ in range(100):
            await asyncio.sleep(0.005)
            if not state.tasks:
                break
        await asyncio.sleep(0.02)
        return transport.written, state, metrics

    written, state, metrics = asyncio.run(run())
    assert written == [] and not state.tasks
    assert "Traceback" not in caplog.text and "unhandled" not in caplog.text
    metrics.flush()
    labels = {"model": "mlp_batched", "version": "1", "protocol": "rest", "status": "success"}
    assert metrics.registry.get_sample_value("turnout_requests_total", labels) == 1
    assert metrics.registry.get_sample_value(
        "turnout_requests_in_flight", {"model": "mlp_batched", "protocol": "rest"}) == 0


@pytest.mark.parametrize(("model", "method", "tasks", "futures", "cycle", "query"), [
    ("mlp", "POST", 0, 0, False, ""),          # inline: answered in the callback, no task
    ("mlp_batched", "POST", 0, 1, False, ""),  # the batch's future, answered from its callback
    ("mlp", "GET", 1, 0, True, ""),            # metadata: uvicorn's cycle and task
    # a query string or an escaped path: uvicorn's path, which parses and unescapes them
    ("mlp", "POST", 1, 0, True, "?trace=1"),
    ("mlp", "POST", 1, 0, True, "%"),
])
def test_what_the_fast_path_saves(model_zoo, model, method, tasks, futures, cycle, query):
    """The point of the fast path: no ASGI cycle for inference, and no task at all for inline
    or batched models (a batched request's future joins uvicorn's tasks, so that shutdown
    waits for it); other routes keep uvicorn's. No route arms a keep-alive timer per
    request."""

    async def run() -> tuple[int, bytes]:
        protocol, transport, state, _ = await _in_process(model_zoo, model)
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def counted(delay, callback, *args, **kwargs):
            timers.append(getattr(callback, "__name__", repr(callback)))
            return call_later(delay, callback, *args, **kwargs)

        loop.call_later = counted  # type: ignore[method-assign]
        if method == "POST":
            path = f"/v2/models/{model}/infer{query}" if query != "%" \
                else f"/v2/models/{model[:-1]}%{ord(model[-1]):02x}/infer"
            protocol.data_received(_request(path, _body(np.ones((1, 8), np.float32))))
        else:
            protocol.data_received(f"GET /v2/models/{model} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        running = sum(isinstance(t, asyncio.Task) for t in state.tasks)
        started = (running, len(state.tasks) - running,
                   isinstance(protocol.cycle, RequestResponseCycle))
        for _ in range(200):  # until the coalesced write (and any task) has run
            await asyncio.sleep(0.005)
            if transport.written:
                break
        protocol.transport.close()
        return started, b"".join(transport.written)

    timers: list[str] = []
    (started_tasks, started_futures, asgi_cycle), written = asyncio.run(run())
    assert (started_tasks, started_futures, asgi_cycle) == (tasks, futures, cycle)
    # the keep-alive clock is the watchdog's: no timer armed (and cancelled) per request
    assert "timeout_keep_alive_handler" not in timers, timers
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (b'"model_name":"%s"' if method == "POST" else b'"name":"%s"') % model.encode() \
        in written


def test_a_long_pipeline_of_awaiting_requests_is_answered_in_order(server, model_zoo):
    """More pipelined requests than the connection queues (it stops reading at 64 and resumes
    once answered): none lost, none reordered, each with its own outputs."""
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(150)]
    payload = b"".join(_request("/v2/models/mlp_batched/infer", _body(x),
                                extra=f"x-request-id: r{i}\r\n") for i, x in enumerate(xs))
    answers, closed = _exchange(server.url, payload, len(xs), wait_close=0.3)
    assert not closed
    for i, (answer, x) in enumerate(zip(answers, xs, strict=True)):
        assert answer[0] == 200 and answer[1]["x-request-id"] == f"r{i}"
        data = orjson.loads(answer[2])["outputs"][0]["data"]
        np.testing.assert_allclose(np.array(data).reshape(1, 3), _mlp(model_zoo, x), rtol=1e-5)


def test_a_client_leaving_mid_request_leaves_the_server_healthy(server):
    """The claimed request's task finishes without writing to the closed connection; the
    request is still counted, and the next client is served."""
    def in_flight() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "turnout_requests_in_flight" and s.labels["model"] == "slow")

    slow = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                     "data": [1, 2]}]})
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(_request("/v2/models/slow/infer", slow) * 2)
        deadline = time.monotonic() + 5
        while in_flight() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert in_flight() == 1
    deadline = time.monotonic() + 5  # the slow model takes 1 s; then nothing is in flight
    while in_flight() > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight() == 0
    answer = httpx.post(f"{server.url}/v2/models/mlp/infer", content=_body(np.ones((1, 8),
                                                                                np.float32)))
    assert answer.status_code == 200


def test_the_fast_path_finds_what_it_needs_in_this_uvicorn():
    from serving.transport.fastpath import missing_internals

    assert missing_internals() == []


def test_a_uvicorn_without_those_internals_gets_its_own_path_and_a_warning(caplog):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from serving.transport import fastpath

    # h11's protocol has a different shape: what a future httptools protocol might look like
    assert "parser" in fastpath.missing_internals(H11Protocol)
    with caplog.at_level("WARNING", logger="turnout.transport"):
        assert fastpath.bind_protocol(object(), uvicorn_protocol=H11Protocol) == "h11"  # type: ignore[arg-type]
    assert "uvicorn's own h11 path" in caplog.text and "parser" in caplog.text


def test_the_h11_fallback_still_refuses_a_huge_request_head():
    """On the fallback, uvicorn's h11 path with the fast path's head cap: a 1 MiB header is
    refused at once and the connection closed, a normal request answered."""
    import threading

    from serving.transport.fastpath import h11_limit
    from serving.transport.limits import HttpLimits

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = HttpLimits(max_header_bytes=16 * 1024)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="h11",
                                           h11_max_incomplete_event_size=h11_limit(limits),
                                           lifespan="off", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            try:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20)
                             + b"\r\n\r\n")
            except OSError:
                pass  # the server may close before the client finished sending
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 400") or answer == b""
            assert time.monotonic() - start < 2
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "ok"
    finally:
        server.should_exit = True
        thread.join(10)



async def test_claimed_routes_are_remembered_by_path_within_a_bound(model_zoo, tmp_path):
    """Paths are the client's text: the table of routes by path never grows past its bound,
    and a remembered route is what route_of gives; whether a route is answered in the
    reading thread is the data plane's answer for its model, remembered or not."""
    import shutil

    from serving.server.rest import infer

    root = tmp_path / "mlp"
    shutil.copytree(model_zoo["root"] / "mlp_batched", root)
    metrics = Metrics(CollectorRegistry())
    repository = ModelRepository(path=root, name="mlp", metrics=metrics)
    await repository.load_all()
    dataplane = DataPlane(repository=repository, metrics=metrics, executor=ThreadPoolExecutor(1))
    assert not dataplane.runs_blocking("mlp", None)  # batched: answered on the loop
    endpoints = infer.InferenceEndpoints(dataplane, None, max_payload_bytes=1 << 20)  # type: ignore[arg-type]
    paths = [f"/v2/models/m{i}/infer" for i in range(infer._MAX_ROUTES * 3)]
    for path in paths:  # unknown models: their NOT_FOUND comes from the blocking path
        assert endpoints.claim(path, []) == (infer.route_of(path), True)
        assert len(endpoints._routes) <= infer._MAX_ROUTES
    for _ in range(2):  # remembered or not, the same answers
        assert endpoints.claim("/v2/models/mlp/infer", []) == (("rest", "mlp", None), False)
        assert endpoints.claim("/v2/models/mlp/versions/9/infer", []) == (
            ("rest", "mlp", "9"), True)
        assert endpoints.claim("/v2/models/mlp/infer", [(b"content-type", infer.PROTOBUF)]) == (
            (infer.PROTOBUF_PROTOCOL, "mlp", None), False)
        assert endpoints.claim("/v2/health/live", []) is None
