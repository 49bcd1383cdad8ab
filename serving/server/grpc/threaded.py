"""The gRPC edge on grpcio's synchronous server: handlers in a small thread pool.

grpc.aio costs several times more per call than grpcio's threaded server (measured here:
~1,000 vs ~1,600 ModelInfer/s on one core for a small ONNX model); both are fallbacks to the
default event-loop engine (serving/server/grpc/loop_engine.py), which costs less than
either. ModelInfer for an inline, unbatched model is answered entirely in the gRPC thread
(decode, validate, predict, encode). Everything else — batched or thread-pool models, the
repository RPCs, metadata — is the asyncio servicer's own code, run on the server's event
loop, so both engines share one implementation of every RPC but the hot one.

A synchronous handler holds its thread until the answer is ready, so a batch can only merge as
many requests as there are threads waiting on it: with 8 threads a batched torch model served
~900 one-row requests/s at c=64 where the event-loop engine served ~2,000. More threads cost
inline models 7-17% (more threads contending for the GIL: measured at c=32/64 on iris and the
MLP), so the pool starts at ``grpc_threads`` and grows by a full batch of waiters
(``BATCH_WAITERS``) the first time a request goes to a batched model (``HandlerPool``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.protocol import codec_grpc as codec
from serving.protocol import proto
from serving.protocol.codec_grpc import Pb
from serving.server.autobatch import SIZES
from serving.server.dataplane import DataPlane
from serving.server.grpc.server import HEALTH_SERVICES, bind_address, bind_port, reflection_pool
from serving.server.grpc.servicer import InferenceServicer, grpc_server_span, infer_inline
from serving.server.settings import ServerSettings
from serving.transport import tracing

log = logging.getLogger("turnout.grpc")

# Handler threads that may wait on the event loop at once beyond ``grpc_threads``: the largest
# batch automatic batching picks (serving/server/autobatch.py), so it can fill.
BATCH_WAITERS = max(SIZES)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details


class _LoopContext:
    """Stands in for an aio context when an async RPC runs on the loop for a sync call;
    ``turnout_metadata`` is the call's metadata where the model reads headers."""

    def __init__(self, metadata: Any = None) -> None:
        self.turnout_metadata = metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


class HandlerPool(futures.Executor):
    """grpcio's handler threads: one is started when a call arrives and none is idle, up to a
    limit that :meth:`allow` can raise. (ThreadPoolExecutor's limit is fixed, and after a
    burst it counts more idle threads than there are, so it would not grow when raised.)"""

    def __init__(self, limit: int, name: str) -> None:
        self._limit, self._name = limit, name
        self._work: queue.SimpleQueue[tuple[futures.Future, Callable[..., Any], tuple, dict]
                                      | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = self._waiting = self._queued = 0  # started; free; calls not taken
        self._closed = False

    @property
    def threads(self) -> int:
        return self._threads

    def allow(self, limit: int) -> None:
        """Let the pool start up to ``limit`` threads (it starts them as calls arrive)."""
        with self._lock:
            self._limit = max(self._limit, limit)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        future: futures.Future = futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the gRPC handler pool is shut down")
            self._work.put((future, fn, args, kwargs))
            self._queued += 1
            if self._queued > self._waiting and self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"{self._name}_{self._threads}",
                                 daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            item = self._work.get()
            if item is None:
                return
            with self._lock:  # a call taken and a thread busy, counted at once
                self._queued -= 1
                self._waiting -= 1
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the caller, as Executor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            for _ in range(self._threads):
                self._work.put(None)


class ThreadedServicer:
    def __init__(self, dataplane: DataPlane, loop: asyncio.AbstractEventLoop,
                 pool: HandlerPool | None = None, batch_workers: int = 0) -> None:
        self._dataplane = dataplane
        self._loop = loop
        self._async = InferenceServicer(dataplane)
        self._pool, self._batch_workers = pool, batch_workers

    def ModelInfer(self, request: Pb, context: grpc.ServicerContext) -> Pb:
        if tracing.ON and type(request) is not codec.Undecodable:
            with grpc_server_span(request, context.invocation_metadata()):
                return self._model_infer(request, context)
        return self._model_infer(request, context)

    def _model_infer(self, request: Pb, context: grpc.ServicerContext) -> Pb:
        dataplane = self._dataplane
        if type(request) is codec.Undecodable:  # the loop's servicer answers it
            return self._on_loop("ModelInfer", request, context)
        if not dataplane.runs_blocking(request.model_name, request.model_version or None):
            if self._pool is not None:  # a batched model: room for a batch of waiters
                self._pool.allow(self._batch_workers)
                self._pool = None
            wanted = dataplane.wants_headers(request.model_name, request.model_version or None)
            return self._on_loop("ModelInfer", request, context,
                                 context.invocation_metadata() if wanted else None)
        return infer_inline(dataplane, request, context)

    def _on_loop(self, name: str, request: Pb, context: grpc.ServicerContext,
                 metadata: Any = None) -> Pb:
        method = getattr(self._async, name)
        future = asyncio.run_coroutine_threadsafe(method(request, _LoopContext(metadata)),
                                                  self._loop)
        try:
            return future.result()
        except _Aborted as aborted:
            context.abort(aborted.code, aborted.details)
        raise AssertionError("context.abort returned")

    def handler(self, name: str) -> Callable[[Pb, grpc.ServicerContext], Pb]:
        if name == "ModelInfer":
            return self.ModelInfer
        return lambda request, context: self._on_loop(name, request, context)


def build_threaded_grpc_server(dataplane: DataPlane, settings: ServerSettings,
                               loop: asyncio.AbstractEventLoop, *,
                               credentials: grpc.ServerCredentials | None = None,
                               interceptors: Sequence[grpc.ServerInterceptor] = ()
                               ) -> tuple[grpc.Server, Callable[[bool], None]]:
    """A bound, not yet started, threaded gRPC server and its health switch (TLS with
    ``credentials``)."""
    limit = settings.max_payload_bytes
    pool = HandlerPool(settings.grpc_threads, "grpc")
    server = grpc.server(
        pool,
        interceptors=list(interceptors) or None,
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit),
                 ("grpc.so_reuseport", 1)])
    servicer = ThreadedServicer(dataplane, loop, pool, settings.grpc_threads + BATCH_WAITERS)
    handlers: dict[str, Any] = {
        name: grpc.unary_unary_rpc_method_handler(
            servicer.handler(name), request_deserializer=codec.request_parser(name, request_cls),
            response_serializer=codec.response_serializer(name, response_cls))
        for name, (request_cls, response_cls) in proto.METHODS.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(proto.SERVICE_NAME, handlers),))
    health_servicer = health.HealthServicer()
    for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (proto.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server,
        pool=reflection_pool())
    bind_port(server, bind_address(settings.host, settings.grpc_port), credentials)

    def set_serving(serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in HEALTH_SERVICES:
            health_servicer.set(service, status)

    return server, set_serving
