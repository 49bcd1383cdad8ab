"""Inference graphs with KServe's InferenceGraph semantics: one executor, any protocol.

A graph is called like a model (``/v2/models/{graph}/infer``, ``/v1/models/{graph}:predict``,
gRPC ModelInfer with ``model_name`` = the graph); execution starts at node ``root``. Steps call
services (through the same variant choice as any client, so graphs reach canaries) or other
nodes.

- Sequence: steps in order; ``$request`` sends the graph's request, ``$response`` the previous
  step's answer. A step whose condition does not hold ends the sequence with the answer so far.
- Switch: the first step whose condition holds on the request runs (a step without a
  condition always holds); none → 404 / NOT_FOUND.
- Ensemble: all steps at once; the answers merged by step name.
- Splitter: one step picked by weight.

Dependencies: a Hard step's failure (an error answer, no answer, or its timeout) ends the graph
with that failure; a Soft step's failure is skipped in a Sequence (the next step sees the same
data) and reported by step name in an Ensemble. Headers (gRPC: metadata) from the client are
propagated to every step, with the request's ``x-request-id``.

:class:`GraphExecutor` knows nothing of wire formats: a :class:`Wire` per protocol calls a
variant, reshapes an answer into the next request, gives conditions a JSON view and merges an
Ensemble. The edges translate the outcome: an answer, a :class:`StepFailed` carrying a step's
own failure, or a :class:`TurnoutError` the router made (mapped by ``serving.protocol.errors``;
a graph or step timeout is :class:`DeadlineExceeded`, 504 / DEADLINE_EXCEEDED). This module holds
the executor and the REST edge (:class:`GraphRunner`, :class:`RestWire`); ``graph_grpc.py`` the
gRPC edge.

REST ``$response`` passing turns an answer into the next request by renaming ``outputs`` to
``inputs`` (V2) or ``predictions`` to ``instances`` (V1) in the JSON header only; binary tensor
bytes pass through untouched. A REST Ensemble answers ``{stepName: answer, ...}`` (JSON), a Soft
failure as ``{stepName: {"error": ...}}``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson
from starlette.types import Send

from router.balance import Pool
from router.compare import v2_outputs
from router.core import Router
from router.decide import weighted_choice
from router.forward import UpstreamTimeout, UpstreamUnavailable
from router.http_util import HOP_BY_HOP, send_json, send_response, with_retry_after
from router.table import RoutingTable, ServiceRoute, VariantRoute
from serving.protocol.errors import DeadlineExceeded, ModelNotFound, TurnoutError
from serving.spec.conditions import holds
from serving.spec.routes import Graph, Node, Step
from serving.transport import tracing

_HEADER_LENGTH = "inference-header-content-length"
REQUEST_ID = "x-request-id"

M = TypeVar("M")
Headers = Sequence[tuple[str, Any]]  # gRPC metadata values of ``-bin`` keys are bytes


class Wire(Protocol[M]):
    """What the executor needs of one protocol; ``M`` is a request or answer in its wire form."""

    def ok(self, message: M) -> bool:
        """Whether an answer is a success (a failed one is the step's failure)."""

    def view(self, message: M) -> object:
        """A request as JSON, for conditions (built only when a condition is evaluated)."""

    def as_request(self, answer: M) -> M:
        """A step's answer reshaped into the next step's request (``$response``)."""

    def merge(self, parts: list[tuple[str, M | str]]) -> M:
        """An Ensemble's answer from each step's answer, or its Soft failure's text."""

    def error_text(self, answer: M) -> str:
        """The message of a failed answer."""

    async def call(self, service: ServiceRoute, variant: VariantRoute, data: M, headers: Headers,
                   deadline: float) -> M:
        """One call to ``variant`` (retries and ejection included) until ``deadline``."""

    def pool(self, service: ServiceRoute, variant: VariantRoute) -> Pool:
        """The endpoints :meth:`call` would use (whether one is ready decides holding)."""


class StepFailed(Exception, Generic[M]):
    """A step's failure: the step's own failed answer, or an error the router made for it."""

    def __init__(self, answer: M | None = None, error: TurnoutError | None = None) -> None:
        super().__init__(str(error) if error is not None else "step answered with an error")
        self.answer = answer
        self.error = error


@dataclass(frozen=True, slots=True)
class _Call(Generic[M]):
    graph: Graph
    table: RoutingTable
    wire: Wire[M]
    headers: Headers
    pick_headers: dict[str, str]
    deadline: float


_CLOCK_SLACK = 0.01  # seconds


class GraphExecutor:
    """Runs a graph over any :class:`Wire`; shared by the REST and gRPC edges."""

    def __init__(self, router: Router, rng: random.Random | None = None) -> None:
        self.router = router
        self.rng = rng or random.Random()

    async def run(self, graph: Graph, request: M, wire: Wire[M], *, headers: Headers,
                  budget: float | None = None) -> M:
        """The graph's answer to ``request`` within ``budget`` seconds (default: its timeout).

        Raises :class:`StepFailed` (a Hard failure, or every step of a Sequence failed) or a
        :class:`TurnoutError` (e.g. :class:`DeadlineExceeded` when the graph ran out of time).
        """
        if tracing.ON:
            with tracing.span("graph", context=tracing.extract(headers), kind="server",
                              attributes={"turnout.graph": graph.name}):
                return await self._run(graph, request, wire, headers=headers, budget=budget)
        return await self._run(graph, request, wire, headers=headers, budget=budget)

    async def _run(self, graph: Graph, request: M, wire: Wire[M], *, headers: Headers,
                   budget: float | None) -> M:
        budget = graph.timeout_seconds if budget is None else min(budget, graph.timeout_seconds)
        pick = {k: v for k, v in headers if isinstance(v, str)}
        call = _Call(graph, self.router.table, wire, headers, pick, time.monotonic() + budget)
        started = time.perf_counter()
        outcome = "success"
        try:
            return await asyncio.wait_for(self._node(call, "root", request), budget)
        except TimeoutError:
            outcome = "timeout"
            raise _graph_timeout(graph, budget) from None
        except StepFailed:
            # The step ran out of the graph's time (its upstream call shares the graph's
            # deadline; asyncio may run that timer a clock tick early).
            if time.monotonic() >= call.deadline - _CLOCK_SLACK:
                outcome = "timeout"
                raise _graph_timeout(graph, budget) from None
            outcome = "step_failed"
            raise
        except TurnoutError as err:
            outcome = err.kind.value
            raise
        finally:
            metrics = self.router.metrics
            metrics.graph_requests.labels(graph.name, outcome).inc()
            metrics.graph_duration.labels(graph.name).observe(time.perf_counter() - started)

    async def _node(self, call: _Call[M], name: str, request: M) -> M:
        node = call.graph.nodes[name]
        if node.router_type == "Sequence":
            return await self._sequence(call, name, node, request)
        if node.router_type == "Ensemble":
            return await self._ensemble(call, name, node, request)
        if node.router_type == "Switch":
            view = _Lazy(lambda: call.wire.view(request))
            for step in node.steps:
                if step.condition is None or holds(step.condition, view.get()):
                    return await self._step(call, name, step, request)
            raise ModelNotFound(f"no step of switch node {name!r} matches the request")
        step_name = weighted_choice([(s.name or "", s.weight or 0) for s in node.steps],
                                    self.rng.random())
        step = next(s for s in node.steps if s.name == step_name)
        return await self._step(call, name, step, request)

    async def _sequence(self, call: _Call[M], name: str, node: Node, request: M) -> M:
        previous: M | None = None
        failure: StepFailed[M] | None = None
        for step in node.steps:
            data = request if step.data == "$request" or previous is None else \
                call.wire.as_request(previous)
            if step.condition is not None and not holds(step.condition, call.wire.view(data)):
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

    async def _ensemble(self, call: _Call[M], name: str, node: Node, request: M) -> M:
        results = await asyncio.gather(*(self._step(call, name, s, request) for s in node.steps),
                                       return_exceptions=True)
        parts: list[tuple[str, M | str]] = []
        for step, result in zip(node.steps, results, strict=True):
            if isinstance(result, StepFailed | TurnoutError):
                if step.dependency == "Hard":
                    raise result
                parts.append((step.name or "", self._error_text(call, result)))
            elif isinstance(result, BaseException):
                raise result
            else:
                parts.append((step.name or "", result))
        return call.wire.merge(parts)

    async def _step(self, call: _Call[M], node: str, step: Step, data: M) -> M:
        if tracing.ON:
            with tracing.span("graph step", attributes={
                    "turnout.graph": call.graph.name, "turnout.graph.node": node,
                    "turnout.graph.step": step.name or "",
                    "turnout.service": step.service or ""}):
                return await self._step_untraced(call, node, step, data)
        return await self._step_untraced(call, node, step, data)

    async def _step_untraced(self, call: _Call[M], node: str, step: Step, data: M) -> M:
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
                raise StepFailed(error=DeadlineExceeded(
                    f"step {step.name!r} of node {node!r} did not finish within {timeout:g}s")) \
                    from None
            except (UpstreamUnavailable, UpstreamTimeout) as err:
                if isinstance(err, UpstreamTimeout):
                    outcome = "timeout"
                raise StepFailed(error=err) from None
            if not call.wire.ok(answer):
                raise StepFailed(answer)
            outcome = "success"
            return answer
        finally:
            metrics.graph_steps.labels(*labels, outcome).inc()
            metrics.graph_step_duration.labels(*labels).observe(time.perf_counter() - started)

    async def _service(self, call: _Call[M], name: str, data: M) -> M:
        service = call.table.service(name)
        variant, rule = call.table.pick(service, call.pick_headers)
        if tracing.ON:
            tracing.annotate(variant=variant.name, revision=variant.spec.revision, rule=rule)
        if not call.wire.pool(service, variant).ready:  # wait for one, within the graph's time
            service, variant = await self.router.holds.hold(
                service, variant, pool_of=call.wire.pool, headers=call.pick_headers.copy,
                deadline=call.deadline)
        variant.gate.enter(f"variant {variant.name} of {service.name}")
        try:
            return await call.wire.call(service, variant, data, call.headers, call.deadline)
        finally:
            variant.gate.leave()

    @staticmethod
    def _error_text(call: _Call[M], err: BaseException) -> str:
        if isinstance(err, StepFailed):
            if err.answer is not None:
                return call.wire.error_text(err.answer)
            return str(err.error)
        return str(err)


class _Lazy:
    """A value computed on first use (a request's JSON view, only if a condition needs it)."""

    __slots__ = ("_make", "_value", "_done")

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make
        self._value: object = None
        self._done = False

    def get(self) -> object:
        if not self._done:
            self._value, self._done = self._make(), True
        return self._value


def _graph_timeout(graph: Graph, budget: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"graph {graph.name!r} did not finish within {budget:g}s")


# -- REST ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Message:
    """A REST request or answer body as it travels between steps."""

    body: bytes
    header_length: int | None = None
    status: int = 200

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def head(self) -> object:
        view = memoryview(self.body)
        return orjson.loads(view if self.header_length is None else view[:self.header_length])


class RestWire:
    """V2 (``protocol="rest"``) or V1 (``"rest-v1"``) bodies, forwarded as bytes."""

    def __init__(self, router: Router, protocol: str) -> None:
        self.router = router
        self.protocol = protocol

    def ok(self, message: Message) -> bool:
        return message.ok

    def view(self, message: Message) -> object:
        return message.head()

    def as_request(self, answer: Message) -> Message:
        return _as_request(answer, self.protocol)

    def merge(self, parts: list[tuple[str, Message | str]]) -> Message:
        return Message(orjson.dumps({name: {"error": part} if isinstance(part, str)
                                     else _as_json(part) for name, part in parts}))

    def error_text(self, answer: Message) -> str:
        try:
            doc = answer.head()
            if isinstance(doc, dict) and "error" in doc:
                return str(doc["error"])
        except orjson.JSONDecodeError:
            pass
        return f"status {answer.status}"

    def pool(self, service: ServiceRoute, variant: VariantRoute) -> Pool:
        return variant.http

    async def call(self, service: ServiceRoute, variant: VariantRoute, data: Message,
                   headers: Headers, deadline: float) -> Message:
        if self.protocol == "rest":
            path = f"/v2/models/{variant.model}" + (
                f"/versions/{variant.spec.version}" if variant.spec.version else "") + "/infer"
        else:
            path = f"/v1/models/{variant.model}:predict"
        out = list(headers)
        if data.header_length is not None:
            out.append((_HEADER_LENGTH, str(data.header_length)))
        answer = await self.router.http_call(variant, method="POST", path=path, headers=out,
                                             body=data.body, deadline=deadline)
        length = next((int(v) for k, v in answer.headers if k.lower() == _HEADER_LENGTH), None)
        return Message(answer.body, length, answer.status)


class GraphRunner:
    """The REST edge of graphs (``router/rest.py`` hands it graph calls)."""

    def __init__(self, router: Router, rng: random.Random | None = None) -> None:
        self.router = router
        self.executor = GraphExecutor(router, rng)
        self._wires = {p: RestWire(router, p) for p in ("rest", "rest-v1")}

    async def serve(self, send: Send, rid: bytes, *, graph: Graph, body: bytes,
                    headers: dict[str, str], protocol: str) -> None:
        fwd = [(k, v) for k, v in headers.items() if k not in HOP_BY_HOP and k != _HEADER_LENGTH]
        if REQUEST_ID not in headers:
            fwd.append((REQUEST_ID, rid.decode("latin-1")))
        length = headers.get(_HEADER_LENGTH)
        request = Message(body, int(length) if length else None)
        extra = [(REQUEST_ID.encode(), rid)]
        try:
            answer = await self.executor.run(graph, request, self._wires[protocol], headers=fwd)
        except StepFailed as failed:
            if failed.error is not None:
                return await send_json(send, failed.error.http_status,
                                       {"error": str(failed.error)},
                                       with_retry_after(failed.error, extra))
            assert failed.answer is not None
            answer = failed.answer
        except TurnoutError as err:
            return await send_json(send, err.http_status, {"error": str(err)},
                                   with_retry_after(err, extra))
        headers_out = [*extra, (b"content-type", b"application/json")]
        if answer.header_length is not None:
            headers_out = [*extra, (b"content-type", b"application/octet-stream"),
                           (_HEADER_LENGTH.encode(), str(answer.header_length).encode())]
        await send_response(send, answer.status, answer.body, headers_out)


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
