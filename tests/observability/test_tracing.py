"""OpenTelemetry tracing end to end: a real router process and a real model server process export
OTLP/HTTP to a collector in this test (a loopback HTTP server decoding
``ExportTraceServiceRequest`` protobufs), and each request's spans are checked as one trace:
client -> route -> upstream attempt(s) -> infer -> decode / predict / encode, graph steps,
shadow copies, adaptive batches linked to the requests they merged, gRPC metadata, sampling and
hostile ``traceparent`` values. Also: tracing off imports nothing of OpenTelemetry."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import ServerProcess, free_port
from tests.processes import child_env, terminate

pytestmark = pytest.mark.slow

IRIS_ROWS = [[0.1, 0.2, 0.3, 0.4], [1.5, -0.3, 0.9, 2.0]]
IRIS = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                    "data": sum(IRIS_ROWS, [])}]}
MLP = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}
CLIENT_SPAN = "00f067aa0ba902b7"
ENV = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # export within 50 ms, not 5 s


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)
    error: bool = False


class Collector:
    """OTLP/HTTP ``/v1/traces`` on loopback: every exported span, decoded."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans: list[Span] = []
        self.posts = 0
        lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    collector.posts += 1
                    collector.spans += list(_decoded(request))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, names: list[str], timeout: float = 10) -> list[Span]:
        """The spans of ``trace_id`` once each of ``names`` has arrived (as often as listed)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = [s for s in list(self.spans) if s.trace_id == trace_id]
            if all(sum(s.name == n for s in spans) >= names.count(n) for n in names):
                time.sleep(0.2)  # anything else of the trace arrives too
                return [s for s in list(self.spans) if s.trace_id == trace_id]
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {trace_id}: wanted {names}, got "
                                     f"{sorted(s.name for s in spans)}")
            time.sleep(0.05)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _decoded(request: Any) -> list[Span]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                out.append(Span(
                    resource.get("service.name", ""), span.trace_id.hex(), span.span_id.hex(),
                    span.parent_span_id.hex(), span.name, span.kind,
                    {a.key: _value(a.value) for a in span.attributes},
                    [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    span.status.code == 2))
    return out


class FirstTry503(http.server.ThreadingHTTPServer):
    """A replica in front of the real server that answers the first try of every trace 503.

    Two of these make one variant: whichever the router tries first refuses, the other proxies
    the request (traceparent and all) to the model server, so every request is retried once."""

    seen: set[str] = set()
    lock = threading.Lock()

    def __init__(self, upstream: str) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _proxy(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                trace = (self.headers.get("traceparent") or "")[3:35]
                with outer.lock:
                    first = method == "POST" and trace not in outer.seen
                    outer.seen.add(trace)
                if first:
                    status, headers, answer = 503, {"content-type": "application/json"}, \
                        b'{"error":"warming up"}'
                else:
                    forwarded = {k: v for k, v in self.headers.items()
                                 if k.lower() not in ("host", "content-length", "connection")}
                    reply = httpx.request(method, upstream + self.path, headers=forwarded,
                                          content=body)
                    status, answer = reply.status_code, reply.content
                    headers = {"content-type": reply.headers.get("content-type", "")}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:  # noqa: N802
                self._proxy("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._proxy("POST")

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class RouterProcess:
    """``turnout router`` as its own process."""

    def __init__(self, routes: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log_path = routes.parent / f"router-{self.http_port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "router", "--config", str(routes),
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
             "--admin-port", "0", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env=child_env(env))
        self.url = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 30) -> RouterProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/v2/models/iris/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(self.log_path.read_text())

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def plane(model_zoo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("tracing")
    models = root / "models"
    shutil.copytree(model_zoo["root"] / "iris" / "1", models / "iris" / "1")
    shutil.copytree(model_zoo["root"] / "mlp_batched", models / "mlp_batched")
    collector = Collector()
    # the model server is switched on by OpenTelemetry's variables, the routers by flags
    server = ServerProcess(models, env={**ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                        "OTEL_SERVICE_NAME": "model-server"}).wait_ready()
    stubs = [FirstTry503(server.url), FirstTry503(server.url)]
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump({
        "upstream": {"health_check": {"enabled": False}},
        "services": [
            {"name": "iris", "variants": [
                {"name": "stable", "weight": 100, "revision": "iris-r1",
                 "http": [server.url], "grpc": [server.grpc_url]},
                {"name": "copy", "weight": 0, "http": [server.url]}],
             "mirror": {"variant": "copy", "percent": 100}},
            {"name": "flaky", "variants": [
                {"name": "main", "weight": 100, "model": "iris",
                 "http": [s.url for s in stubs]}]},
            {"name": "batched", "variants": [
                {"name": "main", "weight": 100, "model": "mlp_batched", "http": [server.url]}]}],
        "graphs": [{"name": "pipeline", "nodes": {"root": {"routerType": "Sequence", "steps": [
            {"stepName": "first", "serviceName": "iris", "data": "$request"},
            {"stepName": "second", "serviceName": "iris", "data": "$request"}]}}}]}))
    router = RouterProcess(routes, "--trace-endpoint", collector.url, env=ENV)
    unsampled = RouterProcess(routes, "--trace-endpoint", collector.url,
                              "--trace-sample-ratio", "0", env=ENV)
    try:
        router.wait_ready()
        unsampled.wait_ready()
        yield {"router": router, "unsampled": unsampled, "server": server,
               "collector": collector, "tree": model_zoo["iris_v1"]}
    finally:
        for proc in (router, unsampled):
            proc.stop()
        server.stop()
        for stub in stubs:
            stub.shutdown()
        collector.server.shutdown()


def _traceparent(trace_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{CLIENT_SPAN}-{flags}"


def _new_trace() -> str:
    return os.urandom(16).hex()


def _one(spans: list[Span], name: str, **where: Any) -> Span:
    found = [s for s in spans if s.name == name and all(
        getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (name, where, [(s.name, s.parent, s.attributes) for s in spans])
    return found[0]


def _children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent == parent.span_id]


def test_one_trace_from_client_through_router_shadow_and_model_server(plane: Any) -> None:
    trace_id = _new_trace()
    answer = httpx.post(f"{plane['router'].url}/v2/models/iris/infer", json=IRIS,
                        headers={"traceparent": _traceparent(trace_id),
                                 "tracestate": "vendor=1", "x-request-id": "trace-1"})
    assert answer.status_code == 200
    expected = plane["tree"].predict(np.array(IRIS_ROWS)).tolist()
    assert answer.json()["outputs"][0]["data"] == expected
    spans = plane["collector"].trace(trace_id, ["route", "shadow", "upstream attempt",
                                                "upstream attempt", "infer", "infer",
                                                "decode", "predict", "encode"])
    assert {s.trace_id for s in spans} == {trace_id}
    route = _one(spans, "route")
    assert route.parent == CLIENT_SPAN and route.service == "turnout-router"
    assert route.kind == 2  # SERVER
    assert route.attributes["turnout.service"] == "iris"
    assert route.attributes["turnout.variant"] == "stable"
    assert route.attributes["turnout.revision"] == "iris-r1"
    assert route.attributes["turnout.rule"] == "weight"
    assert route.attributes["http.request.method"] == "POST"
    assert route.attributes["http.response.status_code"] == 200
    assert route.attributes["turnout.request_id"] == "trace-1"
    attempt = _one(spans, "upstream attempt", parent=route.span_id)
    assert attempt.kind == 3  # CLIENT
    assert attempt.attributes["turnout.attempt"] == 1
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["server.address"] == plane["server"].url
    infer = _one(spans, "infer", parent=attempt.span_id)
    assert infer.service == "model-server"
    assert infer.attributes["turnout.model.name"] == "iris"
    assert infer.attributes["turnout.model.version"] == "1"
    assert infer.attributes["turnout.outcome"] == "success"
    assert infer.attributes["http.response.status_code"] == 200
    assert sorted(s.name for s in _children(spans, infer)) == ["decode", "encode", "predict"]
    predict = _one(spans, "predict", parent=infer.span_id)
    assert predict.attributes["turnout.model.version"] == "1"
    # the mirror's copy: its own span under the route, marked, with its own attempt and infer
    shadow = _one(spans, "shadow", parent=route.span_id)
    assert shadow.attributes["turnout.shadow"] is True
    assert shadow.attributes["turnout.variant"] == "copy"
    copy_attempt = _one(spans, "upstream attempt", parent=shadow.span_id)
    _one(spans, "infer", parent=copy_attempt.span_id)
    assert not any(s.error for s in spans)


def test_a_retry_is_a_second_attempt_span_and_the_server_hangs_under_it(plane: Any) -> None:
    trace_id = _new_trace()
    answer = httpx.post(f"{plane['router'].url}/v2/models/flaky/infer", json=IRIS,
                        headers={"traceparent": _traceparent(trace_id)})
    assert answer.status_code == 200
    assert answer.json()["outputs"][0]["data"] == \
        plane["tree"].predict(np.array(IRIS_ROWS)).tolist()
    spans = plane["collector"].trace(trace_id, ["route", "upstream attempt",
                                                "upstream attempt", "infer"])
    route = _one(spans, "route")
    attempts = sorted((s for s in spans if s.name == "upstream attempt"),
                      key=lambda s: s.attributes["turnout.attempt"])
    assert [a.attributes["turnout.attempt"] for a in attempts] == [1, 2]
    assert [a.parent for a in attempts] == [route.span_id] * 2
    assert [a.attributes["http.response.status_code"] for a in attempts] == [503, 200]
    assert [a.error for a in attempts] == [True, False]
    assert attempts[0].attributes["server.address"] != attempts[1].attributes["server.address"]
    infer = _one(spans, "infer")
    assert infer.parent == attempts[1].span_id
    assert route.attributes["http.response.status_code"] == 200 and not route.error


def test_graph_steps_are_spans_under_the_graph(plane: Any) -> None:
    trace_id = _new_trace()
    answer = httpx.post(f"{plane['router'].url}/v2/models/pipeline/infer", json=IRIS,
                        headers={"traceparent": _traceparent(trace_id)})
    assert answer.status_code == 200
    spans = plane["collector"].trace(trace_id, ["graph", "graph step", "graph step",
                                                "infer", "infer"])
    graph = _one(spans, "graph")
    assert graph.parent == CLIENT_SPAN and graph.attributes["turnout.graph"] == "pipeline"
    steps = [s for s in spans if s.name == "graph step"]
    assert sorted(s.attributes["turnout.graph.step"] for s in steps) == ["first", "second"]
    for step in steps:
        assert step.parent == graph.span_id
        assert step.attributes["turnout.service"] == "iris"
        assert step.attributes["turnout.variant"] == "stable"
        attempt = _one(spans, "upstream attempt", parent=step.span_id)
        infer = _one(spans, "infer", parent=attempt.span_id)
        assert infer.attributes["turnout.model.name"] == "iris"


def test_a_batch_links_the_requests_it_merged(plane: Any) -> None:
    traces = [_new_trace() for _ in range(8)]

    def send(trace_id: str) -> int:
        return httpx.post(f"{plane['router'].url}/v2/models/batched/infer", json=MLP,
                          headers={"traceparent": _traceparent(trace_id)}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(send, traces)) == [200] * 8
    infers = {}
    for trace_id in traces:
        spans = plane["collector"].trace(trace_id, ["infer", "queue wait", "decode", "encode"])
        infer = _one(spans, "infer")
        assert infer.attributes["turnout.model.name"] == "mlp_batched"
        wait = _one(spans, "queue wait")
        assert wait.parent == infer.span_id
        infers[(trace_id, infer.span_id)] = infer
    batches = [s for s in plane["collector"].spans if s.name == "batch"
               and any(link in infers for link in s.links)]
    linked = [link for batch in batches for link in batch.links]
    assert sorted(linked) == sorted(infers)  # every request in exactly one batch
    for batch in batches:
        assert batch.attributes["turnout.batch.requests"] == len(batch.links)
        assert batch.attributes["turnout.batch.size"] == len(batch.links)  # one row each
        assert (batch.trace_id, batch.parent) == batch.links[0]  # under its first request
        predict = [s for s in plane["collector"].spans if s.name == "predict"
                   and s.parent == batch.span_id]
        assert len(predict) == 1 and predict[0].attributes["turnout.batch.size"] == \
            len(batch.links)


def test_grpc_metadata_carries_the_trace(plane: Any) -> None:
    from serving.protocol import proto

    trace_id = _new_trace()
    request = proto.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[2, 4])
    tensor.contents.fp64_contents.extend(sum(IRIS_ROWS, []))
    with grpc.insecure_channel(f"127.0.0.1:{plane['router'].grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=proto.ModelInferRequest.SerializeToString,
                                   response_deserializer=proto.ModelInferResponse.FromString)
        answer = call(request, metadata=[("traceparent", _traceparent(trace_id))], timeout=10)
    assert list(answer.outputs[0].contents.int64_contents) == \
        plane["tree"].predict(np.array(IRIS_ROWS)).tolist()
    spans = plane["collector"].trace(trace_id, ["route", "upstream attempt", "infer",
                                                "predict"])
    route = _one(spans, "route", parent=CLIENT_SPAN)
    assert route.attributes["rpc.system"] == "grpc"
    assert route.attributes["rpc.method"] == "ModelInfer"
    assert route.attributes["turnout.variant"] == "stable"
    attempt = _one(spans, "upstream attempt", parent=route.span_id)
    infer = _one(spans, "infer", parent=attempt.span_id)
    assert infer.service == "model-server"
    _one(spans, "predict", parent=infer.span_id)


def test_sampling_ratio_zero_and_unsampled_parents_export_nothing(plane: Any) -> None:
    collector = plane["collector"]
    before = len(collector.spans)
    for _ in range(5):  # ratio 0: a request without a traceparent starts no trace anywhere
        assert httpx.post(f"{plane['unsampled'].url}/v2/models/iris/infer",
                          json=IRIS).status_code == 200
    unsampled = _new_trace()  # the client's "not sampled" flag is followed (parent-based)
    assert httpx.post(f"{plane['router'].url}/v2/models/iris/infer", json=IRIS,
                      headers={"traceparent": _traceparent(unsampled, "00")}).status_code == 200
    sampled = _new_trace()  # a sampled parent is followed even at ratio 0
    assert httpx.post(f"{plane['unsampled'].url}/v2/models/iris/infer", json=IRIS,
                      headers={"traceparent": _traceparent(sampled)}).status_code == 200
    collector.trace(sampled, ["route", "infer"])
    time.sleep(0.5)
    new = collector.spans[before:]
    assert {s.trace_id for s in new} == {sampled}


@pytest.mark.parametrize("hostile", [
    "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01",  # not hex
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "-x" * 3000,  # 6 KB
    "garbage, with=commas; spaces and 00-ids",
])
def test_a_hostile_traceparent_is_ignored(plane: Any, hostile: str) -> None:
    rid = f"hostile-{os.urandom(4).hex()}"
    answer = httpx.post(f"{plane['router'].url}/v2/models/iris/infer", json=IRIS,
                        headers={"traceparent": hostile, "tracestate": "a=" + "b" * 5000,
                                 "x-request-id": rid})
    assert answer.status_code == 200
    collector = plane["collector"]
    deadline = time.monotonic() + 10
    while not (routes := [s for s in list(collector.spans) if s.name == "route"
                          and s.attributes.get("turnout.request_id") == rid]):
        assert time.monotonic() < deadline, "no route span"
        time.sleep(0.05)
    route = routes[0]
    assert route.parent == "" and route.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    spans = collector.trace(route.trace_id, ["route", "infer"])  # a fresh trace, continued
    attempt = _one(spans, "upstream attempt", parent=route.span_id)
    _one(spans, "infer", parent=attempt.span_id)


def test_a_copy_that_starts_after_its_route_span_ended_is_still_traced() -> None:
    """The race CI met under load: the primary answered and its route span ended before the
    shadow copy's task first ran; the copy's spans must still be made (the parent is sampled,
    only no longer recording), and a child of an unsampled parent must still be skipped."""
    collector = Collector()
    code = f"""
import asyncio
from serving.transport import tracing
assert tracing.setup("late", endpoint={collector.url!r})
api = tracing._api

async def main():
    with tracing.span("route") as route:
        copy = asyncio.get_running_loop().create_future()
        async def shadow():
            await asyncio.sleep(0)  # runs after the route block below has ended
            assert not api.get_current_span().is_recording()
            with tracing.span("shadow"):
                with tracing.span("upstream attempt", kind="client"):
                    pass
            copy.set_result(None)
        task = asyncio.create_task(shadow())
    await task
    unsampled = api.NonRecordingSpan(api.SpanContext(
        route.get_span_context().trace_id, 0x1234, is_remote=True,
        trace_flags=api.TraceFlags(0)))
    with api.use_span(unsampled):
        with tracing.span("child of unsampled"):
            pass
    print(format(route.get_span_context().trace_id, "032x"))

asyncio.run(main())
tracing.shutdown()
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60, cwd=Path(__file__).parents[2])
        spans = collector.trace(out.stdout.strip(), ["route", "shadow", "upstream attempt"])
    finally:
        collector.server.shutdown()
    route = _one(spans, "route")
    shadow = _one(spans, "shadow", parent=route.span_id)
    _one(spans, "upstream attempt", parent=shadow.span_id)
    assert sorted(s.name for s in spans) == ["route", "shadow", "upstream attempt"]


def test_tracing_off_imports_no_opentelemetry() -> None:
    """The processes' whole serving stack, configured without any OTEL_* variable or flag."""
    code = """
import sys
from serving.transport import tracing
import router.server, serving.server.process, serving.server.rest.infer, serving.cli
from router.settings import RouterSettings
settings = RouterSettings(config="routes.yaml")
assert tracing.setup("x", endpoint=settings.trace_endpoint, ratio=settings.trace_sample_ratio,
                     env={"OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "x"}) is False
assert not tracing.ON
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("env", "flag", "on"), [
    ({}, None, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, None, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, None, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None,
     False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, False),
    ({}, "http://c:4318", True),
])
def test_when_tracing_is_on(env: dict[str, str], flag: str | None, on: bool) -> None:
    from serving.transport.tracing import traces_url, wanted

    assert wanted(flag, env) is on
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/custom/path") == "http://c:4318/custom/path"


def test_turnout_up_hands_its_flags_to_the_router_and_replicas() -> None:
    from router.settings import RouterSettings
    from serving.server.settings import ServerSettings
    from serving.transport.tracing import trace_variables

    env = trace_variables("http://collector:4318", 0.25)
    assert env == {"TURNOUT_TRACE_ENDPOINT": "http://collector:4318",
                   "TURNOUT_TRACE_SAMPLE_RATIO": "0.25",
                   "TURNOUT_ROUTER_TRACE_ENDPOINT": "http://collector:4318",
                   "TURNOUT_ROUTER_TRACE_SAMPLE_RATIO": "0.25"}
    assert trace_variables(None, None) == {}
    with pytest.MonkeyPatch.context() as patch:  # as the children read them
        for key, value in env.items():
            patch.setenv(key, value)
        router = RouterSettings(config="routes.yaml")
        server = ServerSettings()
    assert (router.trace_endpoint, router.trace_sample_ratio) == ("http://collector:4318", 0.25)
    assert (server.trace_endpoint, server.trace_sample_ratio) == ("http://collector:4318", 0.25)
