"""The gRPC edge end to end: a real grpc.aio server over the real data plane and repository,
driven by the real clients (tritonclient.grpc in process, kserve in a subprocess), a plain
channel with Turnout's own messages, the standard health stub and a reflection client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from serving.protocol import proto
from serving.protocol.datatypes import serialize_bytes_tensor
from serving.server.dataplane import DataPlane
from serving.server.grpc import InferenceServicer, SetServing, build_grpc_server
from serving.server.grpc.loop_engine import build_loop_grpc_server
from serving.server.metrics import Metrics
from serving.server.repository import ModelRepository
from serving.server.settings import ServerSettings
from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
RUNTIMES = "turnout_grpc_models"  # the module beside this file, imported by the repository
SMALL_LIMIT = 1024  # max_payload_bytes of the second server


@dataclass
class Stack:
    url: str
    small_url: str
    weights: dict[str, np.ndarray]  # version -> W of model "linear"
    registry: CollectorRegistry
    dataplane: DataPlane
    set_serving: SetServing
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def serving(self, serving: bool) -> None:
        """Flip health as draining code does: synchronously, on the server's loop."""
        async def flip() -> None:
            self.set_serving(serving)
        self.run(flip())

    def requests(self, model: str, version: str, status: str) -> float:
        return self.registry.get_sample_value("turnout_requests_total", {
            "model": model, "version": version, "protocol": "grpc", "status": status}) or 0.0


def _write_models(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    weights = {v: rng.normal(size=(4, 3)).astype(np.float32) for v in ("1", "2")}

    def model(name: str, cls: str, **settings: Any) -> Path:
        (root / name).mkdir()
        (root / name / "model-settings.yaml").write_text(
            yaml.safe_dump({"runtime": f"{RUNTIMES}:{cls}", **settings}))
        return root / name

    linear = model("linear", "MatMul")
    for version, w in weights.items():
        (linear / version).mkdir()
        np.save(linear / version / "weights.npy", w)
    np.save(model("spare", "MatMul") / "weights.npy", weights["1"])
    model("exploding", "ExplodesInPredict")
    # batched: the loop engine answers these from the batch's callback (transport's Later)
    batching = {"max_batch_size": 64, "max_latency_ms": 5}
    np.save(model("batched", "MatMul", batching=batching) / "weights.npy", weights["1"])
    model("exploding_batched", "ExplodesInPredict", batching=batching)
    (model("corrupt", "CorruptArtifact") / "weights.npy").write_bytes(b"not numpy data")
    return weights


class _Started:
    """A gRPC server of either engine, listening: grpc.aio's, or the event-loop engine's
    (serving/transport/h2grpc); the same tests hold for both."""

    def __init__(self, engine: str, dataplane: DataPlane, settings: ServerSettings) -> None:
        self.engine, self.settings = engine, settings
        if engine == "aio":
            self.server, self.set_serving = build_grpc_server(dataplane, settings)
        else:
            self.server, self.set_serving = build_loop_grpc_server(dataplane, settings)

    async def start(self) -> None:
        if self.engine == "aio":
            await self.server.start()
        else:
            await self.server.start(self.settings.host, self.settings.grpc_port)

    async def stop(self) -> None:
        await self.server.stop(None)


@pytest.fixture(scope="module", params=["aio", "loop"])
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two servers (normal and tiny payload limit) over one data plane, on a background loop."""
    engine = request.param
    root = tmp_path_factory.mktemp("grpc-models")
    weights = _write_models(root)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-test-loop", daemon=True)
    thread.start()
    executor = ThreadPoolExecutor(2)
    port, small_port = free_port(), free_port()

    async def start() -> tuple[Any, ...]:
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        repository = ModelRepository(path=root, name=None, metrics=metrics)
        await repository.load_all()
        dataplane = DataPlane(repository=repository, metrics=metrics, executor=executor,
                              strict_readiness=False)  # "corrupt" is broken on purpose
        dataplane.started = True
        server = _Started(engine, dataplane, ServerSettings(host="127.0.0.1", grpc_port=port))
        small = _Started(engine, dataplane, ServerSettings(
            host="127.0.0.1", grpc_port=small_port, max_payload_bytes=SMALL_LIMIT))
        await server.start()
        await small.start()
        return registry, dataplane, server, server.set_serving, small

    registry, dataplane, server, set_serving, small = asyncio.run_coroutine_threadsafe(
        start(), loop).result(timeout=60)
    stack = Stack(f"127.0.0.1:{port}", f"127.0.0.1:{small_port}", weights, registry, dataplane,
                  set_serving, loop)
    try:
        yield stack
    finally:
        stack.run(server.stop())
        stack.run(small.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        executor.shutdown()


@pytest.fixture(scope="module")
def triton(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(stack.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.url) as chan:
        yield chan


def _rpc(channel: grpc.Channel, name: str) -> grpc.UnaryUnaryMultiCallable:
    """A stub for one RPC built from Turnout's own (private-pool) message classes."""
    request_cls, response_cls = proto.METHODS[name]
    return channel.unary_unary(f"/{proto.SERVICE_NAME}/{name}",
                               request_serializer=request_cls.SerializeToString,
                               response_deserializer=response_cls.FromString)


def _batch(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    labels = np.array([f"row-{i}".encode() for i in range(rows)], dtype=object)
    counts = rng.integers(-1000, 1000, size=rows, dtype=np.int64)
    return x, labels, counts


def _triton_inputs(x: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                   x_datatype: str = "FP32") -> list[grpcclient.InferInput]:
    tensors = []
    # Sent in an order other than the declared one: inputs pair by name, raw buffers by index.
    for name, array, datatype in (("count", counts, "INT64"), ("x", x, x_datatype),
                                  ("label", labels, "BYTES")):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _assert_still_serves(triton: grpcclient.InferenceServerClient, stack: Stack) -> None:
    x, labels, counts = _batch(2, seed=99)
    result = triton.infer("linear", _triton_inputs(x, labels, counts))
    np.testing.assert_allclose(result.as_numpy("y"), x @ stack.weights["2"], rtol=1e-6)


def _expect_error(call: Any, status: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{status}"
    assert message in caught.value.message()


# -- health and metadata through tritonclient ---------------------------------------------------
def test_liveness_readiness_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()  # relaxed: the stack holds "corrupt" on purpose
    assert triton.is_model_ready("linear")
    assert triton.is_model_ready("linear", "1")
    assert not triton.is_model_ready("corrupt")
    server = triton.get_server_metadata()
    assert server.name == "turnout"
    assert "model_repository" in server.extensions
    meta = triton.get_model_metadata("linear")
    assert (meta.name, list(meta.versions), meta.platform) == ("linear", ["1", "2"], "numpy")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("x", "FP32", [-1, 4]), ("label", "BYTES", [-1]), ("count", "INT64", [-1])]
    assert [t.name for t in meta.outputs] == ["y", "label_upper", "count_doubled"]


def test_metadata_of_a_model_that_failed_to_load_is_unavailable_with_its_reason(triton, stack):
    _expect_error(lambda: triton.get_model_metadata("corrupt"), "UNAVAILABLE",
                  "model 'corrupt' is UNAVAILABLE: ValueError:")
    _assert_still_serves(triton, stack)


# -- inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 64])
def test_raw_inference_equals_the_model_computed_in_process(triton, stack, rows):
    before = stack.requests("linear", "2", "success")
    x, labels, counts = _batch(rows, seed=rows)
    result = triton.infer("linear", _triton_inputs(x, labels, counts))
    np.testing.assert_allclose(result.as_numpy("y"), x @ stack.weights["2"], rtol=1e-6)
    assert result.as_numpy("label_upper").tolist() == [s.upper() for s in labels]
    np.testing.assert_array_equal(result.as_numpy("count_doubled"), counts * 2)
    response = result.get_response()
    assert response.model_version == "2"
    assert len(response.raw_output_contents) == 3  # raw in, raw out
    assert stack.requests("linear", "2", "success") == before + 1


def test_batched_calls_equal_the_model_computed_in_process_and_are_counted(stack):
    """Concurrent calls to a batched model, merged: each gets exactly its own rows."""
    before = stack.requests("batched", "1", "success")
    batches = stack.registry.get_sample_value(
        "turnout_batch_size_rows_count", {"model": "batched", "version": "1"}) or 0.0
    cases = [_batch(1 + i % 3, seed=100 + i) for i in range(40)]

    def call(case):
        with grpcclient.InferenceServerClient(stack.url) as client:
            return client.infer("batched", _triton_inputs(*case), request_id="b")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(call, cases))
    for (x, labels, counts), result in zip(cases, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("y"), x @ stack.weights["1"], rtol=1e-6)
        assert result.as_numpy("label_upper").tolist() == [s.upper() for s in labels]
        np.testing.assert_array_equal(result.as_numpy("count_doubled"), counts * 2)
        assert result.get_response().id == "b"
    stack.dataplane.metrics.flush()
    assert stack.requests("batched", "1", "success") == before + 40
    merged = stack.registry.get_sample_value(
        "turnout_batch_size_rows_count", {"model": "batched", "version": "1"}) - batches
    assert 0 < merged <= 40


def test_batched_model_errors_are_clean_and_counted(triton, stack):
    before = stack.requests("exploding_batched", "1", "model_failed")
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    _expect_error(lambda: triton.infer("exploding_batched", [x]), "INTERNAL",
                  "model 'exploding_batched' failed during predict (request id ")
    assert stack.requests("exploding_batched", "1", "model_failed") == before + 1
    x, labels, counts = _batch(2)
    _expect_error(lambda: triton.infer("batched", _triton_inputs(np.resize(x, (2, 5)), labels,
                                                                 counts)),
                  "INVALID_ARGUMENT", "input 'x' has 5 features but the model expects 4")
    _assert_still_serves(triton, stack)


def test_a_batched_call_that_ends_first_gives_up_its_batch_place(stack):
    """The loop engine's ModelInfer for a batched model returns the transport's Later; when
    the call ends first (deadline, client gone) the request leaves its batch, counted."""
    from serving.server.grpc.loop_engine import LoopServicer
    from serving.transport.h2grpc.calls import Later

    x, labels, counts = _batch(1)
    request = proto.ModelInferRequest(model_name="batched")
    for name, array, datatype in (("x", x, "FP32"), ("count", counts, "INT64")):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        getattr(tensor.contents, "fp32_contents" if datatype == "FP32" else
                "int64_contents").extend(array.ravel().tolist())
    label = request.inputs.add(name="label", datatype="BYTES", shape=[1])
    label.contents.bytes_contents.extend(labels.tolist())
    before = stack.requests("batched", "1", "not_ready")
    batcher_queue: list[int] = []

    async def give_up() -> None:
        servicer = LoopServicer(stack.dataplane)
        later = servicer.ModelInfer(request, AbortingContext())
        assert type(later) is Later
        batcher_queue.append(stack.dataplane.repository.get("batched", None).batcher.queued)
        later.cancel()  # as the call does when it ends first
        await asyncio.sleep(0.05)

    stack.run(give_up())
    assert batcher_queue == [1]
    stack.dataplane.metrics.flush()
    assert stack.requests("batched", "1", "not_ready") == before + 1


def test_versions_requested_outputs_and_id_echo(triton, stack):
    x, labels, counts = _batch(3, seed=5)
    result = triton.infer("linear", _triton_inputs(x, labels, counts), model_version="1",
                          outputs=[grpcclient.InferRequestedOutput("y")], request_id="req-42")
    response = result.get_response()
    assert (response.id, response.model_version) == ("req-42", "1")
    assert [o.name for o in response.outputs] == ["y"]
    np.testing.assert_allclose(result.as_numpy("y"), x @ stack.weights["1"], rtol=1e-6)
    assert not np.allclose(stack.weights["1"], stack.weights["2"])  # versions really differ


def test_typed_contents_through_a_plain_channel(channel, stack):
    x, _, counts = _batch(2, seed=3)
    request = proto.ModelInferRequest(model_name="linear", id="typed-1")
    for name, datatype, shape, field, values in (
            ("x", "FP32", [2, 4], "fp32_contents", x.reshape(-1).tolist()),
            ("label", "BYTES", [2], "bytes_contents", [b"ab", b"xyz"]),
            ("count", "INT64", [2], "int64_contents", counts.tolist())):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    response = _rpc(channel, "ModelInfer")(request, timeout=10)
    assert response.id == "typed-1" and not response.raw_output_contents
    outputs = {o.name: o for o in response.outputs}
    y = np.array(outputs["y"].contents.fp32_contents, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(y, x @ stack.weights["2"], rtol=1e-6)
    assert list(outputs["y"].shape) == [2, 3]
    assert list(outputs["label_upper"].contents.bytes_contents) == [b"AB", b"XYZ"]
    assert list(outputs["count_doubled"].contents.int64_contents) == (counts * 2).tolist()


# -- errors: each asserts the code, the message and that the server still serves ----------------
@pytest.mark.parametrize(("model", "version", "x_datatype", "features", "status", "message"), [
    ("nope", "", "FP32", 4, "NOT_FOUND", "model 'nope' is not found"),
    ("linear", "7", "FP32", 4, "NOT_FOUND", "model 'linear' has no version '7'; versions: 1, 2"),
    ("linear", "", "BYTES", 4, "INVALID_ARGUMENT",
     "input 'x' has datatype BYTES, which cannot be converted to the model's FP32"),
    ("linear", "", "FP32", 5, "INVALID_ARGUMENT",
     "input 'x' has 5 features but the model expects 4"),
])
def test_client_mistakes(triton, stack, model, version, x_datatype, features, status, message):
    x, labels, counts = _batch(2)
    x = np.resize(x, (2, features))
    if x_datatype == "BYTES":
        x = np.array([str(v).encode() for v in x.reshape(-1)], dtype=object).reshape(x.shape)
    inputs = _triton_inputs(x, labels, counts, x_datatype)
    _expect_error(lambda: triton.infer(model, inputs, model_version=version), status, message)
    _assert_still_serves(triton, stack)


def test_raw_length_mismatch_is_rejected_and_counted(channel, triton, stack):
    before = stack.requests("linear", "", "invalid")
    x, labels, counts = _batch(2)
    request = proto.ModelInferRequest(model_name="linear", raw_input_contents=[
        x.tobytes()[:-4], serialize_bytes_tensor(labels), counts.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.inputs.add(name="label", datatype="BYTES", shape=[2])
    request.inputs.add(name="count", datatype="INT64", shape=[2])
    with pytest.raises(grpc.RpcError) as caught:
        _rpc(channel, "ModelInfer")(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == ("input 'x': 28 bytes of raw data do not match shape "
                                      "[2, 4] of FP32 (32 bytes expected)")
    assert stack.requests("linear", "", "invalid") == before + 1
    _assert_still_serves(triton, stack)


def test_payload_over_the_limit_is_resource_exhausted(stack):
    client = grpcclient.InferenceServerClient(stack.small_url)
    try:
        x, labels, counts = _batch(100)  # 1600 bytes of x alone
        _expect_error(lambda: client.infer("linear", _triton_inputs(x, labels, counts)),
                      "RESOURCE_EXHAUSTED", "larger than max")
        x, labels, counts = _batch(1)
        result = client.infer("linear", _triton_inputs(x, labels, counts))
        np.testing.assert_allclose(result.as_numpy("y"), x @ stack.weights["2"], rtol=1e-6)
    finally:
        client.close()


def test_model_that_raises_is_internal_clean_and_counted(triton, stack):
    before = stack.requests("exploding", "1", "model_failed")
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("exploding", [x])
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert "model 'exploding' failed during predict (request id " in caught.value.message()
    assert "zero norm" not in caught.value.message()  # the model's own text: the log only
    assert stack.requests("exploding", "1", "model_failed") == before + 1
    _assert_still_serves(triton, stack)


class Aborted(Exception):
    """What the stand-in context's abort raises (as grpc.aio's does)."""


class AbortingContext:
    """A servicer context that records the status it is aborted with."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted

    def invocation_metadata(self) -> tuple:
        return ()


def test_unexpected_errors_become_a_clean_internal_status(caplog):
    class BrokenDataPlane:
        def server_metadata(self) -> None:
            raise KeyError("secret internals")

    context = AbortingContext()
    servicer = InferenceServicer(BrokenDataPlane())  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="turnout.grpc"), pytest.raises(Aborted):
        asyncio.run(servicer.ServerMetadata(proto.ServerMetadataRequest(), context))
    assert context.code is grpc.StatusCode.INTERNAL
    assert context.details.startswith("internal server error in ServerMetadata (request id ")
    assert "secret" not in context.details
    assert "secret internals" in caplog.text  # the traceback stays in the server log


def test_model_infers_own_error_mapping_matches_every_other_rpcs(caplog):
    """ModelInfer maps errors itself (one coroutine per call, not _rpc's three): the same
    clean INTERNAL for the unexpected, the error's own status for a refusal, counted."""
    from serving.protocol import codec_grpc
    from serving.protocol.errors import InvalidInput

    class BrokenDataPlane:
        rejected: list = []

        def wants_headers(self, name: str, version: str | None) -> bool:
            return False

        async def infer(self, request, *, protocol: str) -> None:
            raise KeyError("secret internals")

        def count_rejected(self, **labels) -> None:
            self.rejected.append(labels)

    dataplane = BrokenDataPlane()
    servicer = InferenceServicer(dataplane)  # type: ignore[arg-type]
    request = proto.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0\0\0\0")
    context = AbortingContext()
    with caplog.at_level(logging.ERROR, logger="turnout.grpc"), pytest.raises(Aborted):
        asyncio.run(servicer.ModelInfer(request, context))
    assert context.code is grpc.StatusCode.INTERNAL
    assert context.details.startswith("internal server error in ModelInfer (request id ")
    assert "secret" not in context.details and "secret internals" in caplog.text

    undecodable = codec_grpc.Undecodable(InvalidInput("malformed ModelInferRequest: x"))
    with pytest.raises(Aborted):
        asyncio.run(servicer.ModelInfer(undecodable, context))
    assert (context.code, context.details) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "malformed ModelInferRequest: x")
    request.raw_input_contents[0] = b"\0"  # 1 byte for a 4-byte FP32
    with pytest.raises(Aborted):
        asyncio.run(servicer.ModelInfer(request, context))
    assert context.code is grpc.StatusCode.INVALID_ARGUMENT and "1 bytes" in context.details
    assert [r["model"] for r in dataplane.rejected] == ["", "m"]


# -- repository extension -----------------------------------------------------------------------
def test_repository_index_load_and_unload(triton, channel, stack):
    index = {(m.name, m.version): (m.state, m.reason)
             for m in triton.get_model_repository_index().models}
    assert index[("linear", "1")] == index[("linear", "2")] == ("READY", "")
    assert index[("corrupt", "1")][0] == "UNAVAILABLE" and "ValueError" in index[("corrupt", "1")][1]
    ready_only = _rpc(channel, "RepositoryIndex")(proto.RepositoryIndexRequest(ready=True),
                                                  timeout=10)
    assert "corrupt" not in {m.name for m in ready_only.models}

    triton.unload_model("spare")
    _expect_error(lambda: triton.is_model_ready("spare"), "NOT_FOUND", "model 'spare'")
    index = {m.name: (m.state, m.reason) for m in triton.get_model_repository_index().models}
    assert index["spare"] == ("UNAVAILABLE", "unloaded")
    triton.load_model("spare")
    assert triton.is_model_ready("spare")
    _expect_error(lambda: triton.load_model("spare", config='{"backend": "onnx"}'),
                  "INVALID_ARGUMENT", "repository parameters ['config'] are not supported")
    _expect_error(lambda: triton.load_model("missing"), "NOT_FOUND",
                  "model 'missing' is not in the repository")
    _assert_still_serves(triton, stack)


# -- health checking and reflection ---------------------------------------------------------------
def test_health_checks_follow_draining(channel, triton, stack):
    stub = health_pb2_grpc.HealthStub(channel)
    check = stub.Check
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", proto.SERVICE_NAME):
        assert check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == serving
    with pytest.raises(grpc.RpcError) as caught:
        check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=proto.SERVICE_NAME), timeout=10)
    try:
        assert next(watch).status == serving
        stack.dataplane.draining = True
        stack.serving(False)
        for service in ("", proto.SERVICE_NAME):
            status = check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == not_serving
        assert next(watch).status == not_serving  # open watchers hear it too
        assert not triton.is_server_ready()
        assert triton.is_server_live()
    finally:
        watch.cancel()
        stack.dataplane.draining = False
        stack.serving(True)
    assert check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
    assert triton.is_server_ready()


def test_reflection_describes_the_service_without_a_proto_file(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {
        proto.SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    pool = descriptor_pool.DescriptorPool(database)
    infer = pool.FindServiceByName(proto.SERVICE_NAME).methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert infer.input_type.fields_by_name["raw_input_contents"].number == 7
    assert pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]


# -- kserve's client ------------------------------------------------------------------------------
def test_kserve_grpc_client_in_a_subprocess(stack):
    """kserve's protos cannot share a process with tritonclient's, so its client runs apart."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE / "kserve_grpc_probe.py"), stack.url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    x = np.array(seen["x"], dtype=np.float32)
    for kind in ("raw", "typed"):
        answer = seen[kind]
        assert answer["id"] == f"kserve-{kind == 'raw'}" and answer["model_version"] == "2"
        y = answer["outputs"]["y"]
        assert (y["datatype"], y["shape"]) == ("FP32", [2, 3])
        np.testing.assert_allclose(np.array(y["data"], dtype=np.float32).reshape(2, 3),
                                   x @ stack.weights["2"], rtol=1e-6)
        assert answer["outputs"]["label_upper"]["data"] == ["AB", "CD"]
        assert answer["outputs"]["count_doubled"]["data"] == [6, -8]
    assert seen["unload"] == ["spare", True]
    assert seen["load"] == ["spare", True]
    assert seen["spare_ready"] is True
