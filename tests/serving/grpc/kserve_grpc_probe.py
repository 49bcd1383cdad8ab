"""Talks to a Turnout gRPC server with kserve's own client and prints what it saw as JSON.

Run as a subprocess by test_grpc_server.py: kserve registers package ``inference`` in
protobuf's default pool, as tritonclient does, so the two cannot share a process. Turnout's
proto module is imported first on purpose: it must coexist with kserve's registrations.

Usage: python kserve_grpc_probe.py HOST:PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import numpy as np

import serving.protocol.proto  # noqa: F401  (imported before kserve on purpose)

# isort: split
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub


def _inputs(x: np.ndarray, labels: list[str], counts: list[int], *, raw: bool) -> list[InferInput]:
    if raw:
        tensors = [InferInput("x", list(x.shape), "FP32"),
                   InferInput("label", [len(labels)], "BYTES"),
                   InferInput("count", [len(counts)], "INT64")]
        tensors[0].set_data_from_numpy(x)
        tensors[1].set_data_from_numpy(np.array([s.encode() for s in labels], dtype=object))
        tensors[2].set_data_from_numpy(np.array(counts, dtype=np.int64))
        return tensors
    return [InferInput("x", list(x.shape), "FP32", data=x.reshape(-1).tolist()),
            InferInput("label", [len(labels)], "BYTES", data=list(labels)),
            InferInput("count", [len(counts)], "INT64", data=list(counts))]


def _outputs(response) -> dict[str, object]:
    return {out.name: {"datatype": out.datatype, "shape": out.shape,
                       "data": [v.decode() if isinstance(v, bytes) else v
                                for v in out.as_numpy().reshape(-1).tolist()]}
            for out in response.outputs}


async def main(url: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    client = InferenceGRPCClient(url, timeout=10, retries=0)
    seen["live"] = await client.is_server_live()
    seen["ready"] = await client.is_server_ready()
    seen["model_ready"] = await client.is_model_ready("linear")
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    for raw in (True, False):
        request = InferRequest(model_name="linear", request_id=f"kserve-{raw}",
                               infer_inputs=_inputs(x, ["ab", "cd"], [3, -4], raw=raw))
        response = await client.infer(request)
        seen["raw" if raw else "typed"] = {"id": response.id,
                                           "model_version": response.model_version,
                                           "outputs": _outputs(response)}
    seen["x"] = x.tolist()
    # kserve's repository messages put the model name in field 1.
    channel = grpc.aio.insecure_channel(url)
    stub = GRPCInferenceServiceStub(channel)
    unloaded = await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="spare"))
    seen["unload"] = [unloaded.model_name, unloaded.isUnloaded]
    loaded = await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="spare"))
    seen["load"] = [loaded.model_name, loaded.isLoaded]
    seen["spare_ready"] = await client.is_model_ready("spare")
    await channel.close()
    await client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
