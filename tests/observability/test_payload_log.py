"""Payload logging as CloudEvents (KServe's ``logger``) and mirror disagreements, end to end.

Real processes on loopback: two ``turnout serve`` model servers (``m`` echoes on one, doubles
on the other), a router on its own event loop, and a CloudEvents sink: a small aiohttp server
in a subprocess that appends what it receives (headers and body bytes) to a JSON-lines file.
Clients are real (httpx, tritonclient's gRPC client).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

e2e = pytest.mark.slow  # the tests that start model servers, a router and a sink


def _load(name: str, path: Path) -> Any:
    """A test helper module by path (tests are not a package and never import each other)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TESTS = Path(__file__).parents[1]
_ROUTER = _load("turnout_router_fixtures", _TESTS / "router" / "conftest.py")
RouterThread = _ROUTER.RouterThread
ServerProcess = _ROUTER.ServerProcess
free_port = _ROUTER.free_port

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}


def _settings(path: Path, runtime: str, **params: Any) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": f"turnout_test_runtimes:{runtime}", "parameters": params,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``echo`` answers y = x, ``double`` y = 2x (the canary that disagrees)."""
    root = tmp_path_factory.mktemp("payload-zoo")
    _settings(root / "echo" / "m", "Echo")
    _settings(root / "double" / "m", "Slow", delay=0.0)
    procs = {name: ServerProcess(root / name) for name in ("echo", "double")}
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def _routes(servers: dict[str, Any], *, mirror: bool = False,
            logger: dict[str, Any] | None = None) -> dict[str, Any]:
    echo, double = servers["echo"], servers["double"]
    service: dict[str, Any] = {"name": "m", "variants": [
        {"name": "stable", "weight": 100, "revision": "m-00001", "http": [echo.url],
         "grpc": [echo.grpc_url]},
        {"name": "canary", "weight": 0, "revision": "m-00002", "http": [double.url],
         "grpc": [double.grpc_url]}]}
    if mirror:
        service["mirror"] = {"variant": "canary", "percent": 100}
    if logger is not None:
        service["logger"] = logger
    return {"upstream": {"grpc_via_http": True}, "services": [service]}


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


# -- mirror disagreements -------------------------------------------------------------------


@e2e
def test_mirror_disagreements_are_kept_and_served_behind_the_admin_token(servers, tmp_path):
    router = RouterThread(_routes(servers, mirror=True), tmp_path)
    try:
        url = f"{router.admin}/mirror/disagreements"
        assert httpx.get(url).status_code == 401  # behind the admin token like the rest
        with httpx.Client() as client:
            resp = client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                               headers={"x-request-id": "req-1"})
            assert resp.status_code == 200
            assert resp.json()["outputs"][0]["data"] == [1.5, -2.0]
        records = wait_for(lambda: httpx.get(url, headers=router.admin_headers).json()
                           ["disagreements"])
        assert len(records) == 1
        record = records[0]
        assert record["service"] == "m" and record["request_id"] == "req-1"
        assert record["protocol"] == "rest"
        assert record["primary"]["variant"] == "stable"
        assert record["primary"]["revision"] == "m-00001"
        assert record["primary"]["outputs"]["y"] == {"shape": [1, 2], "data": [1.5, -2.0],
                                                     "truncated": False}
        assert record["shadow"]["variant"] == "canary"
        assert record["shadow"]["revision"] == "m-00002"
        assert record["shadow"]["outputs"]["y"]["data"] == [3.0, -4.0]
        assert record["comparison"]["numeric_total"] == 2
        assert record["comparison"]["numeric_disagreed"] == 2
        assert record["comparison"]["mean_abs_difference"] == pytest.approx(1.75)
        assert record["request"]["json"] == BODY

        # gRPC copies are compared and recorded too
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(router.grpc_url) as client:
            x = grpcclient.InferInput("x", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[0.5, 4.0]], dtype=np.float32))
            answer = client.infer("m", [x], headers={"x-request-id": "grpc-1"})
            assert answer.as_numpy("y").tolist() == [[0.5, 4.0]]
        records = wait_for(lambda: len(httpx.get(url, headers=router.admin_headers).json()
                                       ["disagreements"]) == 2 and
                           httpx.get(url, headers=router.admin_headers).json()["disagreements"])
        newest = records[0]
        assert newest["protocol"] == "grpc" and newest["request_id"] == "grpc-1"
        assert newest["shadow"]["outputs"]["y"]["data"] == [1.0, 8.0]
        assert "base64" in newest["request"]

        # filters: by service and a limit; a bad limit is a 400, never a 500
        only = httpx.get(url, params={"limit": 1}, headers=router.admin_headers).json()
        assert [r["request_id"] for r in only["disagreements"]] == ["grpc-1"]
        none = httpx.get(url, params={"service": "other"}, headers=router.admin_headers).json()
        assert none == {"disagreements": []}
        bad = httpx.get(url, params={"limit": "x"}, headers=router.admin_headers)
        assert bad.status_code == 400 and "limit" in bad.json()["error"]

        # records are bounded: 64 elements of each output, the request past 16 KiB by size
        rows = 4000
        many = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32",
                            "data": [1.0] * (2 * rows)}]}
        sent = httpx.post(f"{router.url}/v2/models/m/infer", json=many)
        assert sent.status_code == 200
        records = wait_for(lambda: len(httpx.get(url, headers=router.admin_headers).json()
                                       ["disagreements"]) == 3 and
                           httpx.get(url, headers=router.admin_headers).json()["disagreements"])
        big = records[0]["shadow"]["outputs"]["y"]
        assert big["shape"] == [rows, 2] and big["truncated"] is True
        assert big["data"] == [2.0] * 64
        assert records[0]["request"] == {"size": len(sent.request.content), "omitted": True}
    finally:
        router.stop()


# -- a real CloudEvents sink ----------------------------------------------------------------

_SINK = textwrap.dedent('''
    import asyncio, base64, json, sys
    from aiohttp import web

    port, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def receive(request):
        body = await request.read()
        with open(out, "a") as f:
            f.write(json.dumps({"headers": {k.lower(): v for k, v in request.headers.items()},
                                "body": base64.b64encode(body).decode()}) + "\\n")
        if mode == "stall":  # accepted, never answered
            await asyncio.sleep(3600)
        return web.Response(status=202)

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/{tail:.*}", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *a: print("ready", flush=True))
''')


class Sink:
    """The sink process: every POST it gets, headers and body, one JSON line each."""

    def __init__(self, tmp: Path, mode: str = "ok") -> None:
        self.port = free_port()
        self.path = tmp / f"sink-{self.port}.jsonl"
        self.path.touch()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.proc = subprocess.Popen([sys.executable, "-c", _SINK, str(self.port),
                                      str(self.path), mode], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and "ready" in self.proc.stdout.readline()

    def received(self) -> list[dict[str, Any]]:
        out = []
        for line in self.path.read_text().splitlines():
            doc = json.loads(line)
            doc["body"] = base64.b64decode(doc["body"])
            out.append(doc)
        return out

    def stop(self) -> None:
        self.proc.kill()  # a stalled handler would hold aiohttp's graceful shutdown
        self.proc.wait(10)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tmp_path)
    yield s
    s.stop()


def _ce(doc: dict[str, Any]) -> dict[str, str]:
    return {k[3:]: v for k, v in doc["headers"].items() if k.startswith("ce-")}


@e2e
def test_rest_requests_and_responses_reach_an_http_sink_as_kserve_cloudevents(servers, sink,
                                                                              tmp_path):
    logger = {"url": sink.url, "mode": "all", "namespace": "team-a"}
    router = RouterThread(_routes(servers, logger=logger), tmp_path, grpc=False)
    try:
        body = json.dumps(BODY).encode()
        with httpx.Client() as client:
            resp = client.post(f"{router.url}/v2/models/m/infer", content=body, headers={
                "content-type": "application/json", "ce-id": "event-1"})
            assert resp.status_code == 200
            v1 = client.post(f"{router.url}/v1/models/m:predict",
                             content=b'{"instances": [[1.0, 2.0]]}',
                             headers={"content-type": "application/json",
                                      "x-request-id": "v1-req"})
            assert v1.status_code == 200
        got = wait_for(lambda: len(sink.received()) >= 4 and sink.received())
        assert len(got) == 4
        # four POSTs in flight per sink: a pair may arrive in either order
        request, response = sorted((d for d in got if _ce(d)["id"] == "event-1"),
                                   key=lambda d: _ce(d)["type"])
        assert _ce(request) == {
            "specversion": "1.0", "id": "event-1", "type": "org.kubeflow.serving.inference.request",
            "source": "turnout/team-a/m/m-00001", "time": _ce(request)["time"],
            "inferenceservicename": "m", "namespace": "team-a", "component": "predictor",
            "endpoint": "stable", "revision": "m-00001", "protocol": "rest"}
        assert request["headers"]["content-type"] == "application/json"
        assert request["body"] == body  # the bytes the client sent
        assert _ce(response)["type"] == "org.kubeflow.serving.inference.response"
        assert {k: v for k, v in _ce(response).items() if k not in ("type", "time")} == \
            {k: v for k, v in _ce(request).items() if k not in ("type", "time")}
        assert response["body"] == resp.content  # the bytes the client got
        assert response["headers"]["content-type"] == resp.headers["content-type"]
        assert _ce(request)["time"] <= _ce(response)["time"]
        v1_events = sorted((d for d in got if _ce(d)["id"] == "v1-req"),
                           key=lambda d: _ce(d)["type"])
        assert [_ce(d)["type"].rsplit(".", 1)[1] for d in v1_events] == ["request", "response"]
        assert v1_events[0]["body"] == b'{"instances": [[1.0, 2.0]]}'
        assert v1_events[1]["body"] == v1.content
        assert all(_ce(d)["protocol"] == "rest-v1" for d in v1_events)
        assert wait_for(lambda: router.sample("turnout_router_payload_events_total", service="m",
                                              outcome="sent") == 4)
    finally:
        router.stop()


def _infer_grpc(router: Any, values: list[float], request_id: str) -> Any:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(router.grpc_url) as client:
        x = grpcclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([values], dtype=np.float32))
        return client.infer("m", [x], headers={"x-request-id": request_id, "tenant": "t1"})


@e2e
def test_grpc_calls_are_logged_as_raw_protobuf_with_metadata(servers, sink, tmp_path):
    from serving.protocol import proto

    logger = {"url": sink.url, "metadata_headers": ["Tenant"]}
    router = RouterThread(_routes(servers, logger=logger), tmp_path)
    try:
        answer = _infer_grpc(router, [0.25, 3.0], "grpc-7")
        assert answer.as_numpy("y").tolist() == [[0.25, 3.0]]
        got = wait_for(lambda: len(sink.received()) >= 2 and sink.received())
        request, response = sorted(got, key=lambda d: _ce(d)["type"])
        assert _ce(request)["id"] == _ce(response)["id"] == "grpc-7"
        assert _ce(request)["protocol"] == "grpc" and _ce(request)["endpoint"] == "stable"
        assert json.loads(_ce(request)["metadata"]) == {"tenant": ["t1"]}
        assert request["headers"]["content-type"] == \
            "application/x-protobuf; messageType=inference.ModelInferRequest"
        assert response["headers"]["content-type"] == \
            "application/x-protobuf; messageType=inference.ModelInferResponse"
        sent = proto.ModelInferRequest.FromString(request["body"])
        assert sent.model_name == "m" and list(sent.inputs[0].shape) == [1, 2]
        assert np.frombuffer(sent.raw_input_contents[0], np.float32).tolist() == [0.25, 3.0]
        got_back = proto.ModelInferResponse.FromString(response["body"])
        assert got_back.model_name == "m"
        assert np.frombuffer(got_back.raw_output_contents[0], np.float32).tolist() == [0.25, 3.0]
        # the exact bytes the client got: its own response message, serialised again
        assert response["body"] == answer.get_response().SerializeToString()
    finally:
        router.stop()


def _put_routes(router: Any, doc: dict[str, Any]) -> None:
    resp = httpx.put(f"{router.admin}/config", content=yaml.safe_dump(doc),
                     headers=router.admin_headers)
    assert resp.status_code == 200, resp.text


@e2e
@pytest.mark.parametrize("mode,types", [("request", ["request"]), ("response", ["response"])])
def test_mode_request_or_response_logs_only_that_half(servers, sink, tmp_path, mode, types):
    router = RouterThread(_routes(servers), tmp_path, grpc=False)
    try:
        with httpx.Client() as client:
            assert client.post(f"{router.url}/v2/models/m/infer", json=BODY).status_code == 200
            _put_routes(router, _routes(servers, logger={"url": sink.url, "mode": mode}))
            for i in range(3):
                resp = client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                                   headers={"x-request-id": f"r{i}"})
                assert resp.status_code == 200
            # a failed request (400 from the model server) has no response event
            bad = client.post(f"{router.url}/v2/models/m/infer", json={"inputs": []},
                              headers={"x-request-id": "bad"})
            assert bad.status_code == 400
        expected = 3 + (mode == "request")
        assert wait_for(lambda: router.sample("turnout_router_payload_events_total",
                                              service="m", outcome="sent") == expected)
        got = sink.received()
        assert sorted(_ce(d)["id"] for d in got) == \
            sorted([f"r{i}" for i in range(3)] + (["bad"] if mode == "request" else []))
        assert {_ce(d)["type"].rsplit(".", 1)[1] for d in got} == set(types)
    finally:
        router.stop()


@e2e
def test_jsonl_file_sink_writes_structured_events_and_rotates(servers, tmp_path, monkeypatch):
    import router.payload_sinks as payload_sinks

    path = tmp_path / "logs" / "payloads.jsonl"
    router = RouterThread(_routes(servers, logger={"url": f"file://{path}"}), tmp_path,
                          grpc=False)
    try:
        with httpx.Client() as client:
            resp = client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                               headers={"x-request-id": "file-1"})
        assert wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 2)
        events = [json.loads(line) for line in path.read_text().splitlines()]
        by_type = {e["type"]: e for e in events}
        request = by_type["org.kubeflow.serving.inference.request"]
        response = by_type["org.kubeflow.serving.inference.response"]
        assert request["specversion"] == "1.0" and request["id"] == response["id"] == "file-1"
        assert request["source"] == "turnout/default/m/m-00001"
        assert request["inferenceservicename"] == "m" and request["endpoint"] == "stable"
        assert request["datacontenttype"] == "application/json"
        assert json.loads(base64.b64decode(request["data_base64"])) == BODY
        assert base64.b64decode(response["data_base64"]) == resp.content
        assert path.stat().st_mode & 0o777 == 0o600  # payloads may be personal data

        # past the size bound the file becomes payloads.jsonl.1 and a new one starts
        monkeypatch.setattr(payload_sinks, "FILE_MAX_BYTES", path.stat().st_size + 10)
        with httpx.Client() as client:
            client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                        headers={"x-request-id": "file-2"})
        rotated = path.with_name("payloads.jsonl.1")
        assert wait_for(lambda: rotated.exists() and path.exists() and
                        len(path.read_text().splitlines()) == 2)
        assert {json.loads(line)["id"] for line in rotated.read_text().splitlines()} == \
            {"file-1"}
        assert {json.loads(line)["id"] for line in path.read_text().splitlines()} == {"file-2"}
    finally:
        router.stop()


# -- a sink that is down or stalls never slows clients ---------------------------------------


def _events(router: Any, outcome: str) -> float:
    return router.sample("turnout_router_payload_events_total", service="m", outcome=outcome)


@e2e
def test_a_dead_sink_drops_and_counts_every_event(servers, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/events"  # nothing listens there
    router = RouterThread(_routes(servers, logger={"url": dead}), tmp_path, grpc=False)
    try:
        with httpx.Client() as client:
            for _ in range(50):
                assert client.post(f"{router.url}/v2/models/m/infer", json=BODY).status_code \
                    == 200
        # each event is counted once: a few refused (each opens the breaker), the rest dropped
        assert wait_for(lambda: _events(router, "failed") + _events(router, "dropped") == 100)
        assert _events(router, "sent") == 0
        assert 1 <= _events(router, "failed") < 10 < _events(router, "dropped")
    finally:
        router.stop()


@e2e
def test_a_stalled_sink_never_holds_clients_and_its_events_are_dropped(servers, tmp_path):
    stalled = Sink(tmp_path, mode="stall")  # accepts, reads, never answers
    router = RouterThread(_routes(servers, logger={"url": stalled.url, "mode": "request"}),
                          tmp_path, grpc=False)
    try:
        with httpx.Client() as client:
            started = time.perf_counter()
            for _ in range(40):
                assert client.post(f"{router.url}/v2/models/m/infer", json=BODY).status_code \
                    == 200
            assert time.perf_counter() - started < 2.0  # not one SEND_TIMEOUT waited
        # four POSTs hang until their 2 s timeout (failed); then the breaker drops the queue
        assert wait_for(lambda: _events(router, "failed") + _events(router, "dropped") == 40)
        assert _events(router, "failed") == 4 and _events(router, "sent") == 0
        assert len(stalled.received()) == 4
    finally:
        router.stop()
        stalled.stop()


def _p50(url: str, n: int) -> float:
    times = []
    with httpx.Client() as client:
        for _ in range(20):  # warm the connections
            client.post(url, json=BODY)
        for _ in range(n):
            started = time.perf_counter()
            assert client.post(url, json=BODY).status_code == 200
            times.append(time.perf_counter() - started)
    return float(np.median(times))


@e2e
def test_client_latency_is_unchanged_while_the_sink_is_down(servers, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/events"
    router = RouterThread(_routes(servers), tmp_path, grpc=False)
    try:
        url = f"{router.url}/v2/models/m/infer"
        off = _p50(url, 300)
        _put_routes(router, _routes(servers, logger={"url": dead}))
        on = _p50(url, 300)
        assert _events(router, "dropped") > 0  # logging was on, and its sink down
        print(f"p50 logging off {off * 1e3:.3f} ms, on with the sink down {on * 1e3:.3f} ms")
        assert on < off * 1.5 + 0.001, (on, off)
    finally:
        router.stop()


@e2e
def test_huge_payloads_are_logged_without_data_past_the_cap(servers, sink, tmp_path):
    logger = {"url": sink.url, "max_payload_bytes": 4096}
    router = RouterThread(_routes(servers, logger=logger), tmp_path, grpc=False,
                          max_payload_bytes=16 << 20)
    try:
        rows = 100_000
        big = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32",
                           "data": [0.5] * (2 * rows)}]}
        body = json.dumps(big).encode()
        with httpx.Client(timeout=30) as client:
            started = time.perf_counter()
            resp = client.post(f"{router.url}/v2/models/m/infer", content=body,
                               headers={"x-request-id": "huge", "content-type":
                                        "application/json"})
            elapsed = time.perf_counter() - started
            assert resp.status_code == 200
            small = client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                                headers={"x-request-id": "small"})
        got = wait_for(lambda: len(sink.received()) >= 4 and sink.received())
        huge = {_ce(d)["type"].rsplit(".", 1)[1]: d for d in got if _ce(d)["id"] == "huge"}
        # past the cap: the event still goes, with the size and without the data
        assert _ce(huge["request"])["omitteddatasize"] == str(len(body))
        assert _ce(huge["response"])["omitteddatasize"] == str(len(resp.content))
        assert huge["request"]["body"] == b"" and huge["response"]["body"] == b""
        kept = {_ce(d)["type"].rsplit(".", 1)[1]: d for d in got if _ce(d)["id"] == "small"}
        assert kept["request"]["body"] == small.request.content
        assert kept["response"]["body"] == small.content
        assert "omitteddatasize" not in _ce(kept["request"])
        assert elapsed < 10, elapsed
    finally:
        router.stop()


@e2e
def test_mirror_disagreements_are_sent_as_events(servers, sink, tmp_path):
    logger = {"url": sink.url, "mode": "request"}
    router = RouterThread(_routes(servers, mirror=True, logger=logger), tmp_path, grpc=False)
    try:
        with httpx.Client() as client:
            assert client.post(f"{router.url}/v2/models/m/infer", json=BODY,
                               headers={"x-request-id": "mirrored"}).status_code == 200
        got = wait_for(lambda: len(sink.received()) >= 2 and sink.received())
        (event,) = [d for d in got if _ce(d)["type"] == "org.turnout.mirror.disagreement"]
        assert event["headers"]["content-type"] == "application/json"
        assert _ce(event)["endpoint"] == "canary" and _ce(event)["revision"] == "m-00002"
        data = json.loads(event["body"])
        assert data["request_id"] == "mirrored" and data["request"]["json"] == BODY
        assert data["primary"]["revision"] == "m-00001"
        assert data["primary"]["outputs"]["y"]["data"] == [1.5, -2.0]
        assert data["shadow"]["outputs"]["y"]["data"] == [3.0, -4.0]
    finally:
        router.stop()


# -- the manifest's logger, through the control plane's routes (pure, fast) ------------------


def _isvc(logger: str, *, annotations: str = "") -> Any:
    from serving.spec import load_texts

    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris, namespace: team-a{annotations}}}
spec:
  predictor:
    logger: {logger}
    model: {{modelFormat: {{name: sklearn}}, storageUri: "s3://models/iris"}}
""")]).services[0]


def _planned(service: Any, payload_log: str | None = None) -> Any:
    from serving.control.policy.plan import Observed, plan
    from serving.control.policy.revisions import apply_manifest
    from serving.control.policy.routes import Endpoints

    state = apply_manifest(None, service, now=0)
    endpoints = {state.stable: Endpoints(http=["http://127.0.0.1:1"])}
    return plan(services=[(service, state)], graphs=[], observed=Observed(endpoints=endpoints),
                payload_log=payload_log)


def test_a_manifest_logger_becomes_the_routes_logger_with_the_revision():
    service = _isvc("{mode: request, url: 'http://dumper.team-a/', metadataHeaders: [X-Tenant]}")
    assert not [n for n in service.ignored_locally() if "logger" in n]  # no longer "ignored"
    desired = _planned(service, "/state/payloads.jsonl")
    (route,) = desired.routes.services
    assert route.logger is not None
    assert route.logger.model_dump() == {
        "url": "http://dumper.team-a/", "mode": "request", "inference_service": "iris",
        "namespace": "team-a", "component": "predictor", "max_payload_bytes": 1 << 20,
        "metadata_headers": ["x-tenant"]}
    assert route.variants[0].revision == "iris-00001"


def test_a_logger_without_url_writes_the_default_file_or_is_left_out_with_the_reason():
    service = _isvc("{mode: all}")
    local = _planned(service, "/state/payloads.jsonl")  # turnout up: <state>/payloads.jsonl
    assert local.routes.services[0].logger.url == "/state/payloads.jsonl"
    cluster = _planned(service)  # no default sink: the service is routed, without a logger
    assert cluster.routes.services[0].logger is None
    assert cluster.omitted == ["iris/logger: no url, and no default sink here"]


def test_a_logger_url_the_router_cannot_use_is_left_out_not_a_refused_plan():
    service = _isvc("{url: 'relative/payloads.log'}")
    assert [n for n in service.ignored_locally() if "logger" in n] == [
        "spec.predictor.logger.url 'relative/payloads.log' (events go to http(s):// URLs or "
        ".jsonl files: none are logged)"]
    desired = _planned(service, "/state/payloads.jsonl")
    assert desired.routes.services[0].logger is None
    assert len(desired.omitted) == 1 and "absolute path ending in .jsonl" in desired.omitted[0]


def test_tag_routes_log_under_the_inference_service_and_the_controller_renders_it():
    from serving.control.kube import render
    from serving.control.kube.render import Owner, Settings

    service = _isvc("{url: 'http://dumper/'}",
                    annotations=", annotations: {serving.kserve.io/enable-tag-routing: 'true'}")
    routes = _planned(service).routes
    names = {s.name: s for s in routes.services}
    assert names["latest-iris"].logger == names["iris"].logger
    assert names["latest-iris"].logger.inference_service == "iris"
    cm = render.router_configmap(routes, [Owner(name="iris", uid="u")],
                                 Settings(namespace="team-a", image="turnout:test"))
    doc = yaml.safe_load(cm["data"]["routes.yaml"])
    assert doc["services"][0]["logger"]["url"] == "http://dumper/"
    assert doc["services"][0]["variants"][0]["revision"] == "iris-00001"


@pytest.mark.parametrize("url", ["relative/p.jsonl", "/etc/passwd", "ftp://x/y", "file://p",
                                 "http://", "/var/log/x.jsonl\n"])
def test_routes_refuse_a_sink_the_router_must_not_write(url):
    from serving.spec.routes import ConfigError, parse_config

    with pytest.raises(ConfigError, match="services.0.logger.url"):
        parse_config({"services": [{"name": "m", "logger": {"url": url}, "variants": [
            {"name": "a", "weight": 1, "http": ["http://127.0.0.1:1"]}]}]})


@e2e
def test_turnout_up_writes_a_loggers_events_to_the_state_folder(tmp_path_factory):
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    from tests.control.planes import ROW, Up, isvc

    models = tmp_path_factory.mktemp("logged-models")
    (models / "v1").mkdir()
    x, y = load_iris(return_X_y=True)
    joblib.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y),
                models / "v1" / "model.joblib")
    folder = tmp_path_factory.mktemp("logged-plane")
    plane = Up(folder, isvc("iris", f"file://{models}/v1", logger={"mode": "all"}))
    try:
        plane.wait(lambda: plane.infer() == 200, what="serving")
        path = folder / ".turnout" / "payloads.jsonl"
        plane.wait(lambda: path.exists() and len(path.read_text().splitlines()) >= 2,
                   what="the request's events in .turnout/payloads.jsonl")
        events = [json.loads(line) for line in path.read_text().splitlines()]
        request = next(e for e in events if e["type"].endswith(".request"))
        response = next(e for e in events if e["type"].endswith(".response")
                        and e["id"] == request["id"])
        assert request["inferenceservicename"] == "iris" and request["endpoint"] == "stable"
        assert request["revision"] == "iris-00001"
        assert request["source"] == "turnout/default/iris/iris-00001"
        assert json.loads(base64.b64decode(request["data_base64"])) == ROW
        answer = json.loads(base64.b64decode(response["data_base64"]))
        assert answer["model_name"] == "iris" and answer["outputs"][0]["data"] == [0]
    finally:
        assert plane.stop() == 0, (folder / "up.log").read_text()[-3000:]
