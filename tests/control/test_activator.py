"""The activator in process: demand, bounded waits and forwarding over gRPC (and REST bounds).

The plane is a stand-in exposing only what the activator reads (states, supervisor, waiting);
the replica is a tiny grpc.aio server that records the model name it was asked for, so the
revision → service rename and the pass-through of the replica's status are checked on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pytest

from serving.control.local.activator import GRPC_SERVICE, Activator
from serving.protocol import proto

SERVICE, REVISION = "iris", "iris-00002"


@dataclass
class FakeReplica:
    grpc: str
    http: str = "http://127.0.0.1:9"


@dataclass
class FakeSupervisor:
    ready_now: list[FakeReplica] = field(default_factory=list)

    def ready(self, revision: str) -> list[FakeReplica]:
        return self.ready_now if revision == REVISION else []

    @property
    def replicas(self) -> dict[str, list[FakeReplica]]:
        return {REVISION: self.ready_now}


class Replica(grpc.GenericRpcHandler):
    """Answers ModelInfer with the model name it received; ``fail`` makes it refuse instead."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None

    def service(self, details: Any) -> grpc.RpcMethodHandler:
        async def infer(request: bytes, context: Any) -> bytes:
            message = proto.ModelInferRequest.FromString(request)
            self.seen.append(message.model_name)
            if self.fail is not None:
                await context.abort(*self.fail)
            return proto.ModelInferResponse(model_name=message.model_name,
                                            id=message.id).SerializeToString()
        return grpc.unary_unary_rpc_method_handler(infer)


@pytest.fixture
async def replica() -> AsyncIterator[tuple[Replica, str]]:
    handler = Replica()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield handler, f"127.0.0.1:{port}"
    await server.stop(None)


async def started(**bounds: Any) -> tuple[Activator, Any, grpc.aio.Channel]:
    plane = SimpleNamespace(states={SERVICE: SimpleNamespace(revisions={REVISION: None})},
                            supervisor=FakeSupervisor(), waiting={}, activator=None)
    activator = await Activator.start(plane, **bounds)  # type: ignore[arg-type]
    channel = grpc.aio.insecure_channel(plane.activator.grpc[0])
    return activator, plane, channel


def infer(channel: grpc.aio.Channel, model: str) -> Any:
    call = channel.unary_unary(f"/{GRPC_SERVICE}/ModelInfer")
    return call(proto.ModelInferRequest(model_name=model, id="r1").SerializeToString(), timeout=10)


async def test_grpc_request_is_demand_waits_for_a_replica_and_reaches_it_renamed(replica) -> None:
    handler, address = replica
    activator, plane, channel = await started(hold_seconds=10)
    try:
        pending = asyncio.ensure_future(infer(channel, REVISION))
        for _ in range(200):  # the held request is visible to the autoscaler as waiting
            if plane.waiting.get(REVISION) == 1:
                break
            await asyncio.sleep(0.01)
        assert plane.waiting == {REVISION: 1} and not pending.done()
        plane.supervisor.ready_now.append(FakeReplica(address))
        answer = proto.ModelInferResponse.FromString(await pending)
        assert (answer.model_name, answer.id) == (SERVICE, "r1")
        assert handler.seen == [SERVICE]
        assert plane.waiting == {REVISION: 0}
    finally:
        await channel.close()
        await activator.stop()


async def test_grpc_passes_the_replicas_status_and_details_back(replica) -> None:
    handler, address = replica
    handler.fail = (grpc.StatusCode.INVALID_ARGUMENT, "input 'x' has shape [3]")
    activator, plane, channel = await started()
    plane.supervisor.ready_now.append(FakeReplica(address))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await infer(channel, REVISION)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                           "input 'x' has shape [3]")
    finally:
        await channel.close()
        await activator.stop()


@pytest.mark.parametrize("bounds, why", [
    ({"hold_seconds": 0.2}, "no replica of iris-00002 became ready within 0.2 s"),
    ({"max_waiting": 0}, "0 requests are already waiting for replicas"),
])
async def test_bounds_exceeded_are_retryable_on_both_protocols(bounds: dict, why: str) -> None:
    activator, plane, channel = await started(**bounds)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await infer(channel, REVISION)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and why in err.value.details()
        async with httpx.AsyncClient() as http:
            rest = await http.post(f"{plane.activator.http[0]}/v2/models/{REVISION}/infer",
                                   json={"inputs": []})
        assert (rest.status_code, rest.headers["retry-after"]) == (503, "1")
        assert why in rest.json()["error"]
        assert plane.waiting.get(REVISION, 0) == 0
    finally:
        await channel.close()
        await activator.stop()


async def test_grpc_health_is_answered_and_unknown_models_are_not_found() -> None:
    activator, _, channel = await started()
    try:
        ready = channel.unary_unary(f"/{GRPC_SERVICE}/ServerReady")
        assert proto.ServerReadyResponse.FromString(await ready(b"", timeout=5)).ready
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await infer(channel, "nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in err.value.details()
    finally:
        await channel.close()
        await activator.stop()
