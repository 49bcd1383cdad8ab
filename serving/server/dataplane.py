"""The protocol-neutral core that every edge (REST V1/V2, gRPC) calls.

Each method takes and returns internal types; edges only translate. ``infer`` owns the
request metrics, validation, where predict runs (inline or the bounded thread pool) and the
conversion of model exceptions into clean ``ModelFailed`` errors.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serving.protocol.codec_grpc import PROTOBUF_EXTENSION
from serving.protocol.datatypes import datatype_of
from serving.protocol.errors import (
    ErrorKind,
    InvalidInput,
    ModelFailed,
    ModelNotReady,
    Overloaded,
    TurnoutError,
)
from serving.protocol.types import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RepositoryEntry,
    ServerMetadata,
    Tensor,
)
from serving.runtime.base import Runtime
from serving.runtime.content_types import CONTENT_TYPES, TENSOR_CODECS, encode_tensor
from serving.server.batching import AdaptiveBatcher
from serving.server.metrics import Metrics, RequestMetrics
from serving.server.repository import ModelRepository, ModelVersion
from serving.server.validation import prepare_inputs, select_outputs
from serving.transport import tracing
from serving.transport.logs import request_id_var

log = logging.getLogger("turnout.dataplane")

EXTENSIONS = ["binary_tensor_data", "model_repository", "metrics", PROTOBUF_EXTENSION]


class DataPlane:
    def __init__(self, *, repository: ModelRepository, metrics: Metrics,
                 executor: ThreadPoolExecutor, server_name: str = "turnout",
                 server_version: str = "0.1.0", repository_mutable: bool = True,
                 strict_readiness: bool = True) -> None:
        self.repository = repository
        self.metrics = metrics
        self._executor = executor
        self._server = ServerMetadata(server_name, server_version, list(EXTENSIONS))
        self.started = False
        self.draining = False
        # Worker processes each hold their own copy of the table; changing one would make
        # workers disagree, so the repository extension is read-only there.
        self._repository_mutable = repository_mutable
        self.strict_readiness = strict_readiness
        # Told the server's readiness after a load or unload (the gRPC health service's switch).
        self.readiness_changed: Callable[[bool], None] | None = None

    # -- health and metadata -------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once startup loading finished, until draining begins and, with strict
        readiness (the default, as Triton's), only while every model in the table is READY:
        a replica whose model failed to load must leave rotation rather than answer 503s.
        ``--no-strict-readiness`` lets one broken model of many stay out of the way instead.
        """
        return self.readiness()[0]

    def readiness(self) -> tuple[bool, str | None]:
        """Ready or not, and why not (model reasons carry no paths: the repository strips them)."""
        if not self.started:
            return False, "loading models"
        if self.draining:
            return False, "draining"
        if self.strict_readiness:
            unready = self.unready_models()
            if unready:
                return False, "; ".join(unready)
        return True, None

    def unready_models(self) -> list[str]:
        """Every loaded or configured model version that is not READY, with its reason
        (an unloaded model is not in the table, so it no longer counts)."""
        found = []
        for name in sorted(self.repository.names()):
            for version in self.repository.versions(name):
                mv = self.repository.get(name, version)
                if mv.state != "READY":
                    found.append(f"model '{name}' version {version} is {mv.state}: "
                                 f"{mv.reason or 'no reason given'}")
        return found

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.repository.get(name, version).state == "READY"

    def model_names(self) -> list[str]:
        """The models being served, ready or not (a model that failed to load is listed and
        reports its reason; an unloaded one is not), sorted."""
        return sorted(self.repository.names())

    def server_metadata(self) -> ServerMetadata:
        return self._server

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        mv = self.repository.get(name, version)
        runtime = mv.runtime
        return ModelMetadata(
            name=name,
            versions=self.repository.versions(name),
            platform=mv.platform,
            inputs=list(runtime.inputs) if runtime else [],
            outputs=list(runtime.outputs) if runtime else [],
            state=mv.state,
            reason=mv.reason,
        )

    # -- repository extension ----------------------------------------------------------------
    def repository_index(self) -> list[RepositoryEntry]:
        return self.repository.index()

    async def load_model(self, name: str) -> None:
        self._check_mutable()
        try:
            await self.repository.load(name)
        finally:
            self._tell_readiness()

    async def unload_model(self, name: str) -> None:
        self._check_mutable()
        try:
            await self.repository.unload(name)
        finally:
            self._tell_readiness()

    def _tell_readiness(self) -> None:
        if self.readiness_changed is not None:
            self.readiness_changed(self.ready())

    def _check_mutable(self) -> None:
        if not self._repository_mutable:
            raise InvalidInput("model load/unload is not available with --workers > 1: each "
                               "worker holds its own models; restart the server to change them")

    # -- inference -------------------------------------------------------------------------
    async def infer(self, request: InferenceRequest, *, protocol: str) -> InferenceResponse:
        started = time.perf_counter()
        mv, record = self._resolve(request, protocol, started)
        # try/finally rather than a context manager: this runs once per request.
        status = "success"
        record.begin()
        try:
            runtime, inputs, names = self._prepare(mv, request)
            # Only a runtime that asks (a transformer) is handed the request's headers.
            headers = header_map(request.headers) if request.headers is not None \
                and getattr(runtime, "wants_headers", False) else None
            try:
                if runtime.settings.batching is not None:
                    result = await self._batcher(mv, record).submit(inputs, names)
                elif tracing.ON:
                    result = await self._traced_predict(mv, inputs, names, record, headers)
                else:
                    result = await self._predict(mv, inputs, names, record, headers)
            except Exception as exc:
                raise _model_failed(mv, exc) from None
            return self._respond(mv, request, result, names, inputs)
        except TurnoutError as err:
            status = err.kind.value
            raise
        finally:
            record.end(status, time.perf_counter() - started)
            if tracing.ON:
                tracing.annotate(version=mv.version, outcome=status)

    def infer_soon(self, request: InferenceRequest, *, protocol: str,
                   then: Callable[[InferenceResponse | BaseException], None]
                   ) -> asyncio.Future[Any] | None:
        """:meth:`infer` for a batched model without a coroutine per request: the request is
        queued for its batch now, and ``then`` gets the response, or the error :meth:`infer`
        would raise (``CancelledError`` when the returned future is cancelled), once its batch
        is answered, counted as :meth:`infer` counts. Why: an edge that answers from the
        callback saves a task and three coroutines per request (~3 µs of a REST request's
        loop time at c=64, where the loop and the model share one core).

        Errors found before the request is queued are raised. None where this does not apply
        (an unknown, unloaded or unbatched model, or tracing on): await :meth:`infer`."""
        try:
            mv = self.repository.get(request.model_name, request.model_version)
        except TurnoutError:
            return None
        runtime = mv.runtime
        if runtime is None or runtime.settings.batching is None or tracing.ON:
            return None
        started = time.perf_counter()
        record = self.metrics.for_request(mv.name, mv.version, protocol)
        record.begin()
        try:
            runtime, inputs, names = self._prepare(mv, request)
            try:
                future: asyncio.Future[Any] | None = self._batcher(mv, record).enqueue(
                    inputs, names)
                if future is None:  # a full batch on its own
                    future = asyncio.ensure_future(self._predict(mv, inputs, names, record))
            except Exception as exc:
                raise _model_failed(mv, exc) from None
        except TurnoutError as err:
            record.end(err.kind.value, time.perf_counter() - started)
            raise
        except BaseException:
            record.end(ErrorKind.INTERNAL.value, time.perf_counter() - started)
            raise
        future.add_done_callback(functools.partial(
            self._answer_soon, mv, request, inputs, names, record, started, then))
        return future

    def _answer_soon(self, mv: ModelVersion, request: InferenceRequest,
                     inputs: dict[str, np.ndarray], names: list[str], record: RequestMetrics,
                     started: float, then: Callable[[InferenceResponse | BaseException], None],
                     future: asyncio.Future[Any]) -> None:
        """:meth:`infer_soon`'s second half: the batch's answer to a response, counted."""
        outcome: InferenceResponse | BaseException
        try:
            try:
                result = future.result()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _model_failed(mv, exc) from None
            outcome, status = self._respond(mv, request, result, names, inputs), "success"
        except TurnoutError as err:
            outcome, status = err, err.kind.value
        except asyncio.CancelledError as exc:  # the server's drain time is over
            outcome, status = exc, ErrorKind.NOT_READY.value
        except Exception as exc:  # a bug here: the edge answers it as one
            outcome, status = exc, ErrorKind.INTERNAL.value
        record.end(status, time.perf_counter() - started)
        then(outcome)

    def check_model(self, name: str, version: str | None) -> None:
        """Raise :class:`ModelNotFound` for a model (or version) this server does not have."""
        self.repository.get(name, version)

    def wants_headers(self, name: str, version: str | None) -> bool:
        """Whether the model's runtime reads request headers (edges that must fetch them at a
        cost, as gRPC metadata, ask first)."""
        try:
            runtime = self.repository.get(name, version).runtime
        except TurnoutError:
            return False
        return bool(getattr(runtime, "wants_headers", False))

    def runs_blocking(self, name: str, version: str | None) -> bool:
        """Whether :meth:`infer_blocking` may serve this model from the calling thread: true
        for inline, unbatched models. Unknown models answer true, so the caller gets the same
        NOT_FOUND either way without a hop to the event loop."""
        try:
            runtime = self.repository.get(name, version).runtime
        except TurnoutError:
            return True
        return runtime is None or (runtime.execution == "inline"
                                   and runtime.settings.batching is None)

    def infer_blocking(self, request: InferenceRequest, *, protocol: str) -> InferenceResponse:
        """:meth:`infer` in the calling thread, for edges that run handlers in threads (the
        synchronous gRPC server); only for models where :meth:`runs_blocking` is true."""
        started = time.perf_counter()
        mv, record = self._resolve(request, protocol, started)
        status = "success"
        record.begin()
        try:
            runtime, inputs, names = self._prepare(mv, request)
            computed = time.perf_counter()
            try:
                if tracing.ON:
                    with tracing.span("predict", attributes=_span_attributes(mv)):
                        result = runtime.predict(inputs, names)
                else:
                    result = runtime.predict(inputs, names)
            except Exception as exc:
                raise _model_failed(mv, exc) from None
            record.inference.observe(time.perf_counter() - computed)
            return self._respond(mv, request, result, names, inputs)
        except TurnoutError as err:
            status = err.kind.value
            raise
        finally:
            record.end(status, time.perf_counter() - started)
            if tracing.ON:
                tracing.annotate(version=mv.version, outcome=status)

    def count_rejected(self, *, model: str, version: str | None, protocol: str,
                       error: TurnoutError) -> None:
        """Count a request the edge rejected before it became an InferenceRequest."""
        known = error.kind is not ErrorKind.NOT_FOUND and model in self.repository.names()
        self.metrics.requests.labels(model if known else "", (version or "") if known else "",
                                     protocol, error.kind.value).inc()

    def _resolve(self, request: InferenceRequest, protocol: str,
                 started: float) -> tuple[ModelVersion, RequestMetrics]:
        try:
            mv = self.repository.get(request.model_name, request.model_version)
        except TurnoutError as err:
            # unknown names get empty labels: clients must not be able to mint label values
            self.metrics.for_request("", "", protocol).refused(err.kind.value,
                                                              time.perf_counter() - started)
            raise
        return mv, self.metrics.for_request(mv.name, mv.version, protocol)

    def _prepare(self, mv: ModelVersion, request: InferenceRequest
                 ) -> tuple[Runtime, dict[str, np.ndarray], list[str]]:
        runtime = mv.runtime
        if mv.state != "READY" or runtime is None:
            raise ModelNotReady(f"model '{mv.name}' version {mv.version} is not ready"
                                + (f": {mv.reason}" if mv.reason else ""))
        request.model_name = mv.name
        return runtime, prepare_inputs(request, runtime), select_outputs(request, runtime)

    def _respond(self, mv: ModelVersion, request: InferenceRequest,
                 result: dict[str, np.ndarray], names: Sequence[str],
                 inputs: dict[str, np.ndarray]) -> InferenceResponse:
        batch = next(iter(inputs.values())).shape[0]
        outputs = _package_outputs(mv.name, result, names, batch)
        if mv.runtime is not None and not mv.runtime.encodes_outputs:
            _encode_outputs(mv.runtime, request, outputs)
        return InferenceResponse(model_name=mv.name, model_version=mv.version, id=request.id,
                                 outputs=outputs)

    async def _predict(self, mv: ModelVersion, inputs: dict[str, np.ndarray],
                       names: Sequence[str], record: RequestMetrics,
                       headers: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Run predict where the runtime says it is cheapest: inline or in the thread pool."""
        runtime = mv.runtime
        assert runtime is not None
        predict = runtime.predict if headers is None \
            else functools.partial(runtime.predict_with_headers, headers=headers)  # type: ignore[attr-defined]
        if runtime.execution == "inline":
            started = time.perf_counter()
            result = predict(inputs, names)
            record.inference.observe(time.perf_counter() - started)
            return result
        # Admission: past the limit a request is refused at once (429 + Retry-After), so an
        # overloaded model answers its admitted requests near its usual latency and memory stays
        # bounded, instead of queueing every request for minutes. One loop owns the count.
        limit = mv.admit_limit or self._admission_limit(mv)
        if mv.admitted >= limit:
            raise Overloaded(f"model '{mv.name}' has {mv.admitted} requests running or waiting "
                             f"(limit {limit}); retry shortly")
        mv.admitted += 1
        try:
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            result = await loop.run_in_executor(self._executor, predict, inputs, names)
            record.inference.observe(time.perf_counter() - started)
        finally:
            mv.admitted -= 1
        return result

    async def _traced_predict(self, mv: ModelVersion, inputs: dict[str, np.ndarray],
                              names: Sequence[str], record: RequestMetrics,
                              headers: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0]
        with tracing.span("predict", attributes={**_span_attributes(mv),
                                                 "turnout.batch.size": rows}):
            return await self._predict(mv, inputs, names, record, headers)

    def _admission_limit(self, mv: ModelVersion) -> int:
        runtime = mv.runtime
        assert runtime is not None
        mv.admit_limit = admission_limit(self._executor._max_workers,
                                         runtime.settings.max_queue, runtime.one_row_seconds)
        return mv.admit_limit

    def _batcher(self, mv: ModelVersion, record: RequestMetrics) -> AdaptiveBatcher:
        if mv.batcher is None:
            assert mv.runtime is not None and mv.runtime.settings.batching is not None
            observe = self.metrics.for_batcher(mv.name, mv.version).observe
            mv.batcher = AdaptiveBatcher(
                predict=lambda inputs, names: (self._traced_predict if tracing.ON else
                                               self._predict)(mv, inputs, names, record),
                settings=mv.runtime.settings.batching, observe=observe)
        return mv.batcher


def admission_limit(threads: int, max_queue: int | None, one_row_seconds: float | None) -> int:
    """Threads plus the queue: the model's ``max_queue``, else about one second of work at
    the latency measured at load (at least 8 waiting, at most 4096)."""
    if max_queue is not None:
        return threads + max_queue
    if not one_row_seconds:
        return threads + 8
    return threads + max(8, min(4096, int(threads / one_row_seconds)))


def header_map(raw: Any) -> dict[str, str]:
    """REST header pairs (bytes) or gRPC metadata as one lower-case ``name -> value`` dict
    (repeated names joined with ", "; binary ``-bin`` metadata left out)."""
    found: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower() if isinstance(name, bytes) else str(name).lower()
        if key.endswith("-bin"):
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


def _span_attributes(mv: ModelVersion) -> dict[str, str]:
    return {"turnout.model.name": mv.name, "turnout.model.version": mv.version,
            "turnout.execution": mv.runtime.execution if mv.runtime else ""}


def _encode_outputs(runtime: Runtime, request: InferenceRequest, outputs: list[Tensor]) -> None:
    """Encode outputs by the content type the request asks for on each output, else the one
    declared for it in model settings, and say so in the output's parameters."""
    if not request.outputs and not runtime.settings.outputs:
        return  # the common case, decided without building the two maps
    requested = {o.name: o.parameters.get("content_type") for o in request.outputs or ()}
    declared = {s.name: s.content_type for s in runtime.settings.outputs if s.content_type}
    for tensor in outputs:
        content_type = requested.get(tensor.name) or declared.get(tensor.name)
        if content_type is None:
            continue
        if content_type not in CONTENT_TYPES:
            raise InvalidInput(f"output '{tensor.name}': unknown content_type {content_type!r}; "
                               f"expected one of {', '.join(CONTENT_TYPES)}")
        if content_type in TENSOR_CODECS:
            tensor.data = encode_tensor(tensor.name, tensor.data, content_type)
            tensor.datatype = "BYTES"
        tensor.parameters["content_type"] = content_type


def _model_failed(mv: ModelVersion, exc: Exception) -> TurnoutError:
    """Our own errors pass through; anything a model raises becomes a clean ModelFailed.

    Its text and traceback go to the log only (they can hold paths, data, internals); the
    client is told the request id to find them by."""
    if isinstance(exc, TurnoutError):
        return exc
    rid = current_request_id()
    log.error("model %s version %s failed during predict (request id %s)", mv.name,
              mv.version, rid, exc_info=(type(exc), exc, exc.__traceback__))
    return ModelFailed(f"model '{mv.name}' failed during predict (request id {rid}; the "
                       "server log has the details)")


def current_request_id() -> str:
    """The current request's id, as its log lines carry it; a new one where the edge set none
    (gRPC), said in the log line and the message so the two can be matched."""
    rid = request_id_var.get()
    if rid == "-":
        from serving.server.rest.infer import new_request_id  # (rest imports this module)

        rid = new_request_id()
    return rid


def _package_outputs(model: str, result: dict[str, np.ndarray],
                     names: Sequence[str], batch: int) -> list[Tensor]:
    """Turn runtime arrays into tensors, checking that every output covers the whole batch."""
    outputs = []
    for name in names:
        if name not in result:
            raise ModelFailed(f"model '{model}' did not produce output '{name}'")
        array = result[name]
        if type(array) is not np.ndarray:
            array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] != batch:
            raise ModelFailed(f"model '{model}' returned {array.shape[0] if array.ndim else 0} "
                              f"rows of '{name}' for a batch of {batch}")
        if array.dtype.kind == "U":
            array = array.astype(object)
        try:
            datatype = datatype_of(array)
        except TypeError as exc:
            raise ModelFailed(f"model '{model}' output '{name}': {exc}") from None
        outputs.append(Tensor(name, datatype, array))
    return outputs
