"""Client-supplied names are echoed back bounded: a 100 kB model name is a clean NOT_FOUND /
404 with a short message on every protocol, never a broken stream."""

from __future__ import annotations

import grpc
import httpx
import pytest

from serving.protocol import proto
from serving.protocol.errors import MAX_MESSAGE_CHARS, ModelNotFound

LONG = "m" * 100_000


def test_messages_are_cut_with_their_length_said() -> None:
    original = f"model '{LONG}' is not found"
    message = str(ModelNotFound(original))
    assert len(message) < MAX_MESSAGE_CHARS + 64
    assert message.endswith(f"(cut from {len(original)} characters)")
    assert str(ModelNotFound("short")) == "short"


def test_a_huge_model_name_is_a_clean_not_found(server) -> None:
    # a name within the request-target limit (8 KiB) is a short 404; a longer one, 414
    reply = httpx.post(f"{server.url}/v2/models/{LONG[:8_000]}/infer", json={"inputs": []},
                       timeout=30)
    assert reply.status_code == 404 and len(reply.json()["error"]) < MAX_MESSAGE_CHARS + 64
    reply = httpx.post(f"{server.url}/v2/models/{LONG[:30_000]}/infer", json={"inputs": []},
                       timeout=30)
    assert reply.status_code == 414 and reply.json() == {
        "error": "request target over 8192 bytes"}
    with grpc.insecure_channel(server.grpc_url, options=[
            ("grpc.max_metadata_size", 16 * 1024)]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            infer(proto.ModelInferRequest(model_name=LONG), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(caught.value.details()) < MAX_MESSAGE_CHARS + 64
