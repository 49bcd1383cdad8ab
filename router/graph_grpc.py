"""The gRPC edge of inference graphs: ModelInfer with ``model_name`` = a graph's name.

The graph runs on the same executor as REST (``router/graph.py``); this module is only the
translation. Steps call their services' gRPC endpoints with the request's bytes, fields 1/2
(model name, version) rewritten by appending (``router/rewrite.py``), through the same
retries, ejection and pending caps as any gRPC call. Client metadata plays the part of
headers: it is propagated to every step and drives variant choice; ``x-request-id`` (the
client's, or one minted here) goes to every step and comes back in trailing metadata.

- ``$response``: a ModelInferResponse becomes the next ModelInferRequest with the project's
  protobuf messages: outputs → inputs (name, datatype, shape, parameters, typed contents),
  ``raw_output_contents`` → ``raw_input_contents`` as they are, response parameters → request
  parameters (as REST carries ``parameters`` over). Tensors are never decoded.
- Conditions see the request as V2 JSON (``{"inputs": [{"name", "datatype", "shape", "data"}],
  "parameters": ..., "id": ...}``), the view a REST request gives, decoded and encoded by the
  serving codecs only when a condition is evaluated.
- Ensemble: one ModelInferResponse holding every step's outputs, named ``{stepName}.{output}``
  in step order; each step's ``model_name``, ``model_version``, ``id`` and response parameters
  become response parameters ``{stepName}.model_name`` etc. (``{stepName}.parameters.{key}``),
  and a Soft failure ``{stepName}.error`` — the REST answer ``{stepName: answer}`` in gRPC form.
  Raw contents are kept raw; if steps answered some raw and some typed, the typed ones are
  made raw (the protocol allows raw for all outputs or none).
- The answer is the last step's ModelInferResponse with ``model_name`` set to the graph's name.
  Failures: a step's own failure keeps its status code and message; errors the router makes map
  through ``serving.protocol.errors`` (graph or step timeout → DEADLINE_EXCEEDED, no Switch step
  matches → NOT_FOUND, no endpoint answered → UNAVAILABLE).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from google.protobuf.message import DecodeError

from router.balance import Pool
from router.core import Router
from router.forward import call_variant
from router.graph import REQUEST_ID, GraphExecutor, Headers, StepFailed
from router.grpc_edge import _DROP_METADATA, SERVICE
from router.grpc_hops import (
    GrpcAnswer,
    classify_grpc,
    classify_protobuf_http,
    grpc_attempt,
    infer_path,
    protobuf_http_attempt_async,
    protobuf_http_headers,
    via_http,
)
from router.rewrite import with_name_version
from router.table import ServiceRoute, VariantRoute
from serving.protocol import codec_grpc, codec_v2, proto
from serving.protocol.codec_grpc import Pb
from serving.protocol.datatypes import array_to_raw
from serving.protocol.errors import InvalidInput, TurnoutError
from serving.protocol.types import InferenceRequest, InferenceResponse
from serving.spec.routes import Graph

_INFER = f"/{SERVICE}/ModelInfer"
_OK = grpc.StatusCode.OK
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


class GrpcGraphs:
    """Serves ModelInfer for graph names (``router/grpc_edge.py`` hands such calls here)."""

    def __init__(self, router: Router, executor: GraphExecutor | None = None) -> None:
        self.executor = executor or GraphExecutor(router)
        self.wire = GrpcWire(router)

    async def serve(self, graph: Graph, request: bytes, invocation_metadata: Sequence[Any],
                    budget: float | None) -> GraphOutcome:
        """Run ``graph`` for one call, given the call's metadata and time left (None: no
        deadline); the edge's thread turns the outcome into the gRPC answer."""
        metadata: list[tuple[str, Any]] = [
            (k, v) for k, v in invocation_metadata
            if not k.startswith(":") and k not in _DROP_METADATA]
        rid = next((v for k, v in metadata if k == REQUEST_ID and isinstance(v, str)), None)
        if rid is None:
            rid = f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
            metadata.append((REQUEST_ID, rid))
        trailing = ((REQUEST_ID, rid),)
        try:
            answer = await self.executor.run(graph, GrpcAnswer(_OK, "", request), self.wire,
                                             headers=metadata, budget=budget)
        except StepFailed as failed:
            if failed.error is not None:
                failure = grpc.StatusCode[failed.error.grpc_code], str(failed.error)
            else:
                assert failed.answer is not None
                failure = failed.answer.code, failed.answer.details
            return GraphOutcome(b"", failure, trailing)
        except TurnoutError as err:
            return GraphOutcome(b"", (grpc.StatusCode[err.grpc_code], str(err)), trailing)
        return GraphOutcome(with_name_version(answer.body, graph.name, None), None, trailing)


@dataclass(frozen=True, slots=True)
class GraphOutcome:
    """One graph call's answer: the body, or the status to abort with; and trailing metadata."""

    body: bytes
    failure: tuple[grpc.StatusCode, str] | None
    trailing: tuple[tuple[str, str], ...]


class GrpcWire:
    """Graph steps over gRPC: serialized ModelInferRequest / ModelInferResponse bytes."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def ok(self, message: GrpcAnswer) -> bool:
        return message.code == _OK

    def error_text(self, answer: GrpcAnswer) -> str:
        return answer.details or answer.code.name

    def view(self, message: GrpcAnswer) -> object:
        return request_view(message.body)

    def as_request(self, answer: GrpcAnswer) -> GrpcAnswer:
        response = proto.ModelInferResponse.FromString(answer.body)
        return GrpcAnswer(_OK, "", response_to_request(response).SerializeToString())

    def merge(self, parts: list[tuple[str, GrpcAnswer | str]]) -> GrpcAnswer:
        return GrpcAnswer(_OK, "", merge_responses(
            [(name, part if isinstance(part, str) else
              proto.ModelInferResponse.FromString(part.body)) for name, part in parts]
        ).SerializeToString())

    def pool(self, service: ServiceRoute, variant: VariantRoute) -> Pool:
        return variant.http if via_http(service, variant) else variant.grpc

    async def call(self, service: ServiceRoute, variant: VariantRoute, data: GrpcAnswer,
                   headers: Headers, deadline: float) -> GrpcAnswer:
        # The graph's name becomes the variant's model; the client's version does not apply
        # to the steps (as on REST), the variant's pinned one does.
        if via_http(service, variant):  # the model server takes the path's name and version
            return await call_variant(
                variant=variant, pool=variant.http, max_attempts=service.upstream.max_attempts,
                deadline=deadline, attempt=protobuf_http_attempt_async(
                    self.router, infer_path(variant, ""), data.body,
                    protobuf_http_headers(headers)),
                classify=classify_protobuf_http, metrics=self.router.metrics)
        message = with_name_version(data.body, variant.model, variant.spec.version or "")
        return await call_variant(
            variant=variant, pool=variant.grpc, max_attempts=service.upstream.max_attempts,
            deadline=deadline, attempt=grpc_attempt(self.router, _INFER, message, headers),
            classify=classify_grpc, metrics=self.router.metrics)


def response_to_request(response: Pb) -> Pb:
    """A ModelInferResponse as the ModelInferRequest of the next step (model name unset)."""
    request = proto.ModelInferRequest()
    for key, value in response.parameters.items():
        request.parameters[key].CopyFrom(value)
    for output in response.outputs:
        tensor = request.inputs.add(name=output.name, datatype=output.datatype,
                                    shape=output.shape)
        for key, value in output.parameters.items():
            tensor.parameters[key].CopyFrom(value)
        if output.HasField("contents"):
            tensor.contents.CopyFrom(output.contents)
    request.raw_input_contents.extend(response.raw_output_contents)
    return request


def request_view(body: bytes) -> dict[str, Any]:
    """A ModelInferRequest as the V2 JSON a REST client would have sent, for conditions."""
    try:
        message = proto.ModelInferRequest.FromString(body)
    except DecodeError as exc:
        raise InvalidInput(f"malformed ModelInfer request: {exc}") from None
    request = codec_grpc.request_to_internal(message)
    # The V2 encoder writes tensors (BYTES as text, FP16 widened) the way REST clients send them.
    as_outputs = InferenceResponse(model_name=request.model_name, outputs=request.inputs,
                                   parameters=request.parameters)
    head, _ = codec_v2.response_from_internal(as_outputs, InferenceRequest(inputs=[]))
    encoded = orjson.loads(head)
    doc: dict[str, Any] = {}
    if request.id is not None:
        doc["id"] = request.id
    if "parameters" in encoded:
        doc["parameters"] = encoded["parameters"]
    doc["inputs"] = encoded["outputs"]
    if request.outputs:
        doc["outputs"] = [{"name": o.name, **({"parameters": o.parameters} if o.parameters
                                               else {})} for o in request.outputs]
    return doc


def merge_responses(parts: list[tuple[str, Pb | str]]) -> Pb:
    """An Ensemble's answer: every step's outputs and metadata under its step name."""
    merged = proto.ModelInferResponse()
    answers = [(name, part) for name, part in parts if not isinstance(part, str)]
    raw = any(len(part.raw_output_contents) for _, part in answers)
    for name, part in parts:
        if isinstance(part, str):
            merged.parameters[f"{name}.error"].string_param = part
            continue
        merged.parameters[f"{name}.model_name"].string_param = part.model_name
        if part.model_version:
            merged.parameters[f"{name}.model_version"].string_param = part.model_version
        if part.id:
            merged.parameters[f"{name}.id"].string_param = part.id
        for key, value in part.parameters.items():
            merged.parameters[f"{name}.parameters.{key}"].CopyFrom(value)
        contents = _raw_contents(part) if raw else None
        for index, output in enumerate(part.outputs):
            tensor = merged.outputs.add()
            tensor.CopyFrom(output)
            tensor.name = f"{name}.{output.name}"
            if contents is not None:
                tensor.ClearField("contents")
                merged.raw_output_contents.append(contents[index])
    return merged


def _raw_contents(response: Pb) -> list[bytes]:
    """Each output's raw bytes; typed contents are decoded by the codec and laid out raw."""
    if len(response.raw_output_contents):
        return list(response.raw_output_contents)
    decoded = codec_grpc.request_to_internal(response_to_request(response))
    return [array_to_raw(tensor.data) for tensor in decoded.inputs]
