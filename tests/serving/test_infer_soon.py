"""DataPlane.infer_soon: a batched model's answer from the batch future's callback, exactly as
``infer`` answers and counts it (the REST fast path answers batched requests this way)."""

from __future__ import annotations

import asyncio
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from serving.protocol.errors import InvalidInput, ModelFailed, Overloaded
from serving.protocol.types import InferenceRequest, InferenceResponse, Tensor
from serving.server.dataplane import DataPlane
from serving.server.metrics import Metrics
from serving.server.repository import ModelRepository
from serving.transport import tracing


def _mlp(model_zoo, x):
    w1, w2 = model_zoo["mlp"]
    logits = np.maximum(x @ w1, 0) @ w2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


async def _dataplane(model_zoo, tmp_path, model: str, batching: dict | str | None = None
                     ) -> DataPlane:
    root = tmp_path / model
    shutil.copytree(model_zoo["root"] / model, root)
    if batching is not None:
        (root / "model-settings.yaml").write_text(yaml.safe_dump({"batching": batching}))
    metrics = Metrics(CollectorRegistry())
    repository = ModelRepository(path=root, name=model, metrics=metrics)
    await repository.load_all()
    dataplane = DataPlane(repository=repository, metrics=metrics, executor=ThreadPoolExecutor(2))
    dataplane.started = True
    return dataplane


def _request(model: str, x: np.ndarray, request_id: str | None = None) -> InferenceRequest:
    return InferenceRequest(inputs=[Tensor("x", "FP32", x)], model_name=model, id=request_id)


def _count(dataplane: DataPlane, model: str, status: str) -> float:
    dataplane.metrics.flush()
    value = dataplane.metrics.registry.get_sample_value("turnout_requests_total", {
        "model": model, "version": "1", "protocol": "rest", "status": status})
    return value or 0.0


def _in_flight(dataplane: DataPlane, model: str) -> float:
    dataplane.metrics.flush()
    return dataplane.metrics.registry.get_sample_value(
        "turnout_requests_in_flight", {"model": model, "protocol": "rest"}) or 0.0


def test_answers_equal_the_models_own_and_infers_and_are_counted(model_zoo, tmp_path):
    async def run() -> None:
        dataplane = await _dataplane(model_zoo, tmp_path, "mlp_batched")
        rng = np.random.default_rng(11)
        xs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(24)]
        loop = asyncio.get_running_loop()
        outcomes: list[asyncio.Future] = [loop.create_future() for _ in xs]
        futures = [dataplane.infer_soon(_request("mlp_batched", x, f"r{i}"), protocol="rest",
                                        then=outcome.set_result)
                   for i, (x, outcome) in enumerate(zip(xs, outcomes, strict=True))]
        assert all(isinstance(f, asyncio.Future) for f in futures)
        assert _in_flight(dataplane, "mlp_batched") == 24
        answers = await asyncio.gather(*outcomes)
        for i, (x, answer) in enumerate(zip(xs, answers, strict=True)):
            assert isinstance(answer, InferenceResponse)
            assert (answer.model_name, answer.model_version, answer.id) == (
                "mlp_batched", "1", f"r{i}")
            np.testing.assert_allclose(answer.outputs[0].data, _mlp(model_zoo, x),
                                       rtol=1e-4, atol=1e-6)
            awaited = await dataplane.infer(_request("mlp_batched", x, f"r{i}"),
                                            protocol="rest")
            np.testing.assert_array_equal(answer.outputs[0].data, awaited.outputs[0].data)
            assert answer.outputs[0].name == awaited.outputs[0].name
            assert answer.outputs[0].datatype == awaited.outputs[0].datatype
        assert _count(dataplane, "mlp_batched", "success") == 48
        assert _in_flight(dataplane, "mlp_batched") == 0
        dataplane.metrics.flush()
        batches = dataplane.metrics.registry.get_sample_value(
            "turnout_batch_size_rows_count", {"model": "mlp_batched", "version": "1"})
        assert batches is not None and batches < 48  # merged: fewer calls than requests

    asyncio.run(run())


def test_a_bad_request_is_refused_at_once_and_counted(model_zoo, tmp_path):
    async def run() -> None:
        dataplane = await _dataplane(model_zoo, tmp_path, "mlp_batched")
        seen: list = []
        with pytest.raises(InvalidInput):
            dataplane.infer_soon(_request("mlp_batched", np.ones((1, 5), np.float32)),
                                 protocol="rest", then=seen.append)
        await asyncio.sleep(0.05)
        assert seen == []  # raised, never also handed to then
        assert _count(dataplane, "mlp_batched", "invalid") == 1
        assert _in_flight(dataplane, "mlp_batched") == 0

    asyncio.run(run())


def test_a_full_queue_refuses_with_overloaded(model_zoo, tmp_path):
    async def run() -> None:
        dataplane = await _dataplane(model_zoo, tmp_path, "mlp_batched", {
            "max_batch_size": 4, "max_latency_ms": 50, "max_queue_size": 2})
        outcomes: list = []
        x = np.ones((1, 8), np.float32)
        for _ in range(2):
            dataplane.infer_soon(_request("mlp_batched", x), protocol="rest",
                                 then=outcomes.append)
        with pytest.raises(Overloaded):
            dataplane.infer_soon(_request("mlp_batched", x), protocol="rest",
                                 then=outcomes.append)
        for _ in range(100):
            if len(outcomes) == 2:
                break
            await asyncio.sleep(0.01)
        assert [type(o) for o in outcomes] == [InferenceResponse] * 2
        assert _count(dataplane, "mlp_batched", "overloaded") == 1
        assert _count(dataplane, "mlp_batched", "success") == 2

    asyncio.run(run())


def test_a_request_of_a_full_batch_is_predicted_alone(model_zoo, tmp_path):
    async def run() -> None:
        dataplane = await _dataplane(model_zoo, tmp_path, "mlp_batched", {
            "max_batch_size": 4, "max_latency_ms": 0})
        x = np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)
        outcome = asyncio.get_running_loop().create_future()
        assert dataplane.infer_soon(_request("mlp_batched", x), protocol="rest",
                                    then=outcome.set_result) is not None
        answer = await outcome
        np.testing.assert_allclose(answer.outputs[0].data, _mlp(model_zoo, x),
                                   rtol=1e-4, atol=1e-6)
        assert _count(dataplane, "mlp_batched", "success") == 1

    asyncio.run(run())


def test_a_failing_model_gives_then_a_clean_error(model_zoo, tmp_path, caplog):
    async def run() -> None:
        dataplane = await _dataplane(model_zoo, tmp_path, "mlp_batched")
        runtime = dataplane.repository.get("mlp_batched", None).runtime

        def broken(inputs, outputs):
            raise RuntimeError("secret path /srv/models/weights.bin")

        runtime.predict = broken  # type: ignore[method-assign]
        outcome = asyncio.get_running_loop().create_future()
        dataplane.infer_soon(_request("mlp_batched", np.ones((1, 8), np.float32)),
                             protocol="rest", then=outcome.set_result)
        error = await outcome
        assert isinstance(error, ModelFailed)
        assert "/srv/models" not in str(error) and "failed during predict" in str(error)
        assert _count(dataplane, "mlp_batched", "model_failed") == 1
        assert _in_flight(dataplane, "mlp_batched") == 0

    asyncio.run(run())
    assert "secret path" in caplog.text  # the details are in the log only


def test_a_cancelled_future_hands_then_the_cancellation(model_zoo, tmp_path):
    async def run() -> None:
        dataplane = await _dataplane(model_zoo, tmp_path, "mlp_batched", {
            "max_batch_size": 4, "max_latency_ms": 500})
        outcome = asyncio.get_running_loop().create_future()
        future = dataplane.infer_soon(_request("mlp_batched", np.ones((1, 8), np.float32)),
                                      protocol="rest", then=outcome.set_result)
        assert future is not None
        future.cancel()
        assert isinstance(await outcome, asyncio.CancelledError)
        assert _count(dataplane, "mlp_batched", "not_ready") == 1
        assert _in_flight(dataplane, "mlp_batched") == 0

    asyncio.run(run())


def test_where_it_does_not_apply_the_caller_is_told_to_await_infer(model_zoo, tmp_path,
                                                                   monkeypatch):
    async def run() -> None:
        unbatched = await _dataplane(model_zoo, tmp_path, "mlp", "none")
        x = np.ones((1, 8), np.float32)
        seen: list = []
        assert unbatched.repository.get("mlp", None).runtime.settings.batching is None
        assert unbatched.infer_soon(_request("mlp", x), protocol="rest", then=seen.append) \
            is None
        assert unbatched.infer_soon(_request("nope", x), protocol="rest", then=seen.append) \
            is None
        batched = await _dataplane(model_zoo, tmp_path / "b", "mlp_batched")
        monkeypatch.setattr(tracing, "ON", True)
        assert batched.infer_soon(_request("mlp_batched", x), protocol="rest",
                                  then=seen.append) is None
        await asyncio.sleep(0.05)
        assert seen == []
        # nothing counted for requests handed back
        assert _count(unbatched, "mlp", "success") == 0
        assert _in_flight(batched, "mlp_batched") == 0

    asyncio.run(run())
