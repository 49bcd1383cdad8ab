"""Inference graphs with KServe's InferenceGraph semantics, over REST (V2 and V1).

A graph is called like a model (``/v2/models/{graph}/infer``, ``/v1/models/{graph}:predict``);
execution starts at node ``root``. Steps call services (through the same variant choice as any
client, so graphs reach canaries) or other nodes.

- Sequence: steps in order; ``$request`` sends the graph's request, ``$response`` the previous
  step's answer. A step whose condition does not hold ends the sequence with the answer so far.
- Switch: the first step whose condition holds on the request runs (a step without a
  condition always holds); none → 404.
- Ensemble: all steps at once; the answer is ``{stepName: answer, ...}`` (JSON).
- Splitter: one step picked by weight.

``$response`` passing turns an answer into the next request by renaming ``outputs`` to
``inputs`` (V2) or ``predictions`` to ``instances`` (V1) in the JSON header only; binary tensor
bytes pass through untouched. Dependencies: a Hard step's failure (an error answer, no answer,
or its timeout) ends the graph with that failure; a Soft step's failure is skipped in a
Sequence (the next step sees the same data) and reported as ``{"error": ...}`` in an Ensemble.
Headers from the client are propagated to every step.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import orjson
from starlette.types import Send

from serving.protocol.errors import STATUS, ErrorKind, ModelNotFound, TurnoutError

from .compare import v2_outputs
from .conditions import holds
from .config import Graph, Node, Step
from .core import Router
from .decide import weighted_choice
from .forward import UpstreamUnavailable
from .http_util import HOP_BY_HOP, send_json, send_response

_HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True, slots=True)
class Message:
    """A request or answer body as it travels between steps."""

    body: bytes
    header_length: int | None = None
    status: int = 200

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def head(self) -> object:
        view = memoryview(self.body)
        return orjson.loads(view if self.header_length is None else view[:self.header_length])


class StepFailed(Exception):
    def __init__(self, message: Message) -> None:
        super().__init__(message.body[:200])
        self.message = message


@dataclass(frozen=True, slots=True)
class _Call:
    graph: Graph
    headers: list[tuple[str, str]]
    protocol: str
    deadline: float


class GraphRunner:
    def __init__(self, router: Router, rng: random.Random | None = None) -> None:
        self.router = router
        self.rng = rng or random.Random()

    async def serve(self, send: Send, rid: bytes, *, graph: Graph, body: bytes,
                    headers: dict[str, str], protocol: str) -> None:
        fwd = [(k, v) for k, v in headers.items() if k not in HOP_BY_HOP and k != _HEADER_LENGTH]
        length = headers.get(_HEADER_LENGTH)
        request = Message(body, int(length) if length else None)
        call = _Call(graph, fwd, protocol, time.monotonic() + graph.timeout_seconds)
        extra = [(b"x-request-id", rid)]
        try:
            answer = await asyncio.wait_for(self._node(call, "root", request), graph.timeout_seconds)
        except TimeoutError:
            err = UpstreamUnavailable(f"graph {graph.name!r} did not finish within "
                                      f"{graph.timeout_seconds:g}s")
            return await send_json(send, err.http_status, {"error": str(err)}, extra)
        except StepFailed as failed:
            answer = failed.message
            if time.monotonic() >= call.deadline:  # the step ran out of the graph's time
                err = UpstreamUnavailable(f"graph {graph.name!r} did not finish within "
                                          f"{graph.timeout_seconds:g}s")
                return await send_json(send, err.http_status, {"error": str(err)}, extra)
        except TurnoutError as err:
            return await send_json(send, err.http_status, {"error": str(err)}, extra)
        headers_out = [*extra, (b"content-type", b"application/json")]
        if answer.header_length is not None:
            headers_out = [*extra, (b"content-type", b"application/octet-stream"),
                           (_HEADER_LENGTH.encode(), str(answer.header_length).encode())]
        await send_response(send, answer.status, answer.body, headers_out)

    async def _node(self, call: _Call, name: str, request: Message) -> Message:
        node = call.graph.nodes[name]
        if node.router_type == "Sequence":
            return await self._sequence(call, name, node, request)
        if node.router_type == "Ensemble":
            return await self._ensemble(call, name, node, request)
        if node.router_type == "Switch":
            for step in node.steps:
                if step.condition is None or holds(step.condition, request.head()):
                    return await self._step(call, name, step, request)
            raise ModelNotFound(f"no step of switch node {name!r} matches the request")
        step_name = weighted_choice([(s.name or "", s.weight or 0) for s in node.steps],
                                    self.rng.random())
        step = next(s for s in node.steps if s.name == step_name)
        return await self._step(call, name, step, request)

    async def _sequence(self, call: _Call, name: str, node: Node, request: Message) -> Message:
        previous: Message | None = None
        failure: StepFailed | None = None
        for step in node.steps:
            data = request if step.data == "$request" or previous is None else _as_request(
                previous, call.protocol)
            if step.condition is not None and not holds(step.condition, data.head()):
                break
            try:
                previous = await self._step(call, name, step, data)
            except StepFailed as failed:
                if step.dependency == "Hard":
                    raise
                failure = failed
        if previous is None:
            if failure is not None:
                raise failure  # every step failed softly: the last failure is the answer
            raise UpstreamUnavailable(f"no step of sequence node {name!r} ran")
        return previous

    async def _ensemble(self, call: _Call, name: str, node: Node, request: Message) -> Message:
        results = await asyncio.gather(*(self._step(call, name, s, request) for s in node.steps),
                                       return_exceptions=True)
        merged: dict[str, object] = {}
        for step, result in zip(node.steps, results, strict=True):
            if isinstance(result, StepFailed | TurnoutError):
                if step.dependency == "Hard":
                    raise result
                merged[step.name or ""] = {"error": _error_text(result)}
            elif isinstance(result, BaseException):
                raise result
            else:
                merged[step.name or ""] = _as_json(result)
        return Message(orjson.dumps(merged))

    async def _step(self, call: _Call, node: str, step: Step, data: Message) -> Message:
        metrics = self.router.metrics
        labels = (call.graph.name, node, step.name or "")
        started = time.perf_counter()
        outcome = "error"
        try:
            coro = (self._node(call, step.node, data) if step.node is not None
                    else self._service(call, step.service or "", data))
            timeout = step.timeout_seconds
            try:
                answer = await (asyncio.wait_for(coro, timeout) if timeout else coro)
            except TimeoutError:
                outcome = "timeout"
                raise StepFailed(_error_message(
                    f"step {step.name!r} of node {node!r} did not finish within {timeout:g}s")) \
                    from None
            except UpstreamUnavailable as err:
                raise StepFailed(_error_message(str(err))) from None
            if not answer.ok:
                raise StepFailed(answer)
            outcome = "success"
            return answer
        finally:
            metrics.graph_steps.labels(*labels, outcome).inc()
            metrics.graph_step_duration.labels(*labels).observe(time.perf_counter() - started)

    async def _service(self, call: _Call, name: str, data: Message) -> Message:
        table = self.router.table
        service = table.service(name)
        variant, _ = table.pick(service, dict(call.headers))
        if call.protocol == "rest":
            path = f"/v2/models/{variant.model}" + (
                f"/versions/{variant.spec.version}" if variant.spec.version else "") + "/infer"
        else:
            path = f"/v1/models/{variant.model}:predict"
        headers = list(call.headers)
        if data.header_length is not None:
            headers.append((_HEADER_LENGTH, str(data.header_length)))
        variant.gate.enter(f"variant {variant.name} of {service.name}")
        try:
            answer = await self.router.http_call(variant, method="POST", path=path,
                                                 headers=headers, body=data.body,
                                                 deadline=call.deadline)
        finally:
            variant.gate.leave()
        length = next((int(v) for k, v in answer.headers if k.lower() == _HEADER_LENGTH), None)
        return Message(answer.body, length, answer.status)


def _as_request(answer: Message, protocol: str) -> Message:
    """An answer reshaped into the next step's request, editing only the JSON header."""
    head = answer.head()
    if not isinstance(head, dict):
        return answer
    if protocol == "rest" and "outputs" in head:
        doc = {"inputs": head["outputs"]}
        if "parameters" in head:
            doc["parameters"] = head["parameters"]
    elif protocol != "rest" and "predictions" in head:
        doc = {"instances": head["predictions"]}
    else:
        return answer
    new_head = orjson.dumps(doc)
    if answer.header_length is None:
        return Message(new_head)
    return Message(new_head + answer.body[answer.header_length:], len(new_head))


def _as_json(answer: Message) -> object:
    """An answer as JSON for an Ensemble: binary outputs are decoded into ``data`` lists."""
    head = answer.head()
    if answer.header_length is None or not isinstance(head, dict):
        return head
    arrays = v2_outputs(answer.body, answer.header_length)
    for item in head.get("outputs", []):
        if item["name"] in arrays:
            values = arrays[item["name"]].reshape(-1).tolist()
            item["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else v
                            for v in values]
            item.get("parameters", {}).pop("binary_data_size", None)
    return head


def _error_message(text: str) -> Message:
    """The router's own failure of a step, shaped and coded as a 503 (no answer)."""
    return Message(orjson.dumps({"error": text}), status=STATUS[ErrorKind.NOT_READY][0])


def _error_text(err: BaseException) -> str:
    if isinstance(err, StepFailed):
        try:
            doc = err.message.head()
            if isinstance(doc, dict) and "error" in doc:
                return str(doc["error"])
        except orjson.JSONDecodeError:
            pass
        return f"status {err.message.status}"
    return str(err)
