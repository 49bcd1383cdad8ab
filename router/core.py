"""The router's shared state: the current routing table, upstream clients, shadows and metrics.

The REST and gRPC edges and the graph executor all call variants through :class:`Router`, so
retries, ejection, pending caps and metrics behave the same whatever the protocol.
Reconfiguration (:meth:`Router.apply`) builds a whole new table and swaps it in with one
assignment; requests already running keep the snapshot they started with.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import orjson

from router import traced
from router.balance import Endpoint, Pool
from router.client import HttpClient, UpstreamResponse
from router.forward import Verdict, call_variant
from router.h1blocking import BlockingH1Client
from router.hold import Holds
from router.metrics import RouterMetrics
from router.payload_log import PayloadLogger, listener
from router.shadow import Shadower
from router.table import RoutingTable, VariantRoute, build_table
from serving.protocol.codec_grpc import PROTOBUF_EXTENSION
from serving.spec.routes import RouterConfig
from serving.transport import tracing
from serving.transport.tls import ClientTls

log = logging.getLogger("turnout.router")

# Upstream statuses that mean "this replica cannot serve now; another may".
RETRY_STATUSES = frozenset({503})
STRIKE_STATUSES = frozenset({502, 503, 504})
BLOCKING_CHANNELS = 2  # threaded-client gRPC connections per endpoint


def _close_later(channel: Any) -> None:
    """Close a gRPC channel no longer routed to, once its calls in flight had their time."""
    asyncio.ensure_future(channel.close())


def classify_http(response: UpstreamResponse) -> tuple[Verdict, str]:
    return classify_status(response.status)


def _status(response: UpstreamResponse) -> int:
    return response.status


def classify_status(status: int) -> tuple[Verdict, str]:
    """What an upstream's HTTP status means for retries and ejection, and its outcome label."""
    if status in RETRY_STATUSES:
        return "retry", str(status)
    if status in STRIKE_STATUSES:
        return "failed", str(status)
    if status >= 500:
        return "error", str(status)
    return "ok", str(status)


class Router:
    def __init__(self, config: RouterConfig, *, client: HttpClient, metrics: RouterMetrics,
                 max_message_bytes: int = 64 * 1024 * 1024,
                 upstream_tls: ClientTls | None = None) -> None:
        self.metrics = metrics
        # how https:// and grpcs:// endpoints are verified (serving/transport/tls.py)
        self.upstream_tls = upstream_tls or ClientTls()
        self.client = client
        self.shadower = Shadower(metrics)
        # CloudEvents of the services that have a logger (router/payload_log.py)
        self.payloads = PayloadLogger(metrics.registry)
        self.payloads.configure(config)
        self.shadower.disagreements.listeners.append(listener(self.payloads, lambda: self.table))
        self.max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._blocking: dict[str, list[grpc.Channel]] = {}
        self._calls: dict[tuple[str, str], Iterator[Callable[..., Any]]] = {}
        self._blocking_lock = threading.Lock()
        # the gRPC edge's threads reach REST endpoints through this (upstream.grpc_via_http)
        self.blocking_http = BlockingH1Client(connect_timeout=config.upstream.connect_timeout_seconds,
                                              tls=self.upstream_tls)
        self.table: RoutingTable = build_table(config)
        # requests waiting for a ready endpoint of their variant (router/hold.py)
        self.holds = Holds(metrics, lambda: self.table)
        self.ready = True

    # -- configuration ------------------------------------------------------------------------

    def apply(self, config: RouterConfig) -> None:
        """Swap in ``config`` atomically; channels no longer named are closed after a grace."""
        table = build_table(config, self.table)
        self.payloads.configure(config)  # sinks first: the new table's requests find theirs
        self.table = table
        self.holds.wake()  # held requests look for their variant on the new table
        wanted = {e.address for _, proto, e in table.endpoints() if proto == "grpc"}
        loop = asyncio.get_running_loop()
        grace = table.config.upstream.timeout_seconds
        for address in [a for a in self._channels if a not in wanted]:
            channel = self._channels.pop(address)
            loop.call_later(grace, functools.partial(_close_later, channel))
        with self._blocking_lock:
            gone = [a for a in self._blocking if a not in wanted]
            closing = [c for a in gone for c in self._blocking.pop(a)]
            self._calls = {k: v for k, v in self._calls.items() if k[0] in self._blocking}
        if closing:
            loop.call_later(grace, lambda: loop.run_in_executor(
                None, lambda: [c.close() for c in closing]))
        self.metrics.reloads.labels("applied").inc()
        log.info("routes applied: %d services, %d graphs", len(table.services), len(table.graphs))

    # -- upstream calls -----------------------------------------------------------------------

    async def http_call(self, variant: VariantRoute, *, method: str, path: str,
                        headers: list[tuple[str, str]], body: bytes, deadline: float,
                        max_attempts: int | None = None) -> UpstreamResponse:
        """One REST request to ``variant`` with retries; ``path`` includes the query string."""
        upstream = self.table.services[variant.service].upstream \
            if variant.service in self.table.services else None
        attempts = max_attempts or (upstream.max_attempts if upstream else 1)

        async def attempt(endpoint: Endpoint, remaining: float) -> UpstreamResponse:
            return await self.client.request(method, endpoint.address + path, headers=headers,
                                             body=body, timeout=remaining)

        run: Callable[[Endpoint, float], Awaitable[UpstreamResponse]] = attempt
        if tracing.ON:  # each try in its own span, sending its own traceparent
            async def send(endpoint: Endpoint, remaining: float,
                           sent: list[tuple[str, str]]) -> UpstreamResponse:
                return await self.client.request(method, endpoint.address + path, headers=sent,
                                                 body=body, timeout=remaining)

            run = traced.attempts(send, headers, variant, _status)
        return await call_variant(variant=variant, pool=variant.http, max_attempts=attempts,
                                  deadline=deadline, attempt=run, classify=classify_http,
                                  metrics=self.metrics)

    def channel(self, address: str) -> grpc.aio.Channel:
        """One HTTP/2 channel per gRPC endpoint, multiplexing every call to it."""
        channel = self._channels.get(address)
        if channel is None:
            target, credentials = self._grpc_target(address)
            channel = grpc.aio.insecure_channel(target, options=self._channel_options()) \
                if credentials is None else \
                grpc.aio.secure_channel(target, credentials, options=self._channel_options())
            self._channels[address] = channel
        return channel

    def _grpc_target(self, address: str) -> tuple[str, grpc.ChannelCredentials | None]:
        """``host:port`` and TLS credentials for ``grpcs://host:port``, else None."""
        if address.startswith("grpcs://"):
            return address[len("grpcs://"):], self.upstream_tls.channel_credentials
        return address, None

    def blocking_call(self, address: str, method: str) -> Callable[..., Any]:
        """A callable for ``method`` at ``address`` that the gRPC edge's threads wait on.

        Each endpoint gets :data:`BLOCKING_CHANNELS` threaded-client channels, each its own
        HTTP/2 connection (``use_local_subchannel_pool``), and calls rotate over them: with one
        connection every call of a busy router contends for it (probe: ~15% more calls/s with
        two than with one).
        """
        turn = self._calls.get((address, method))
        if turn is None:
            with self._blocking_lock:
                channels = self._blocking.get(address)
                if channels is None:
                    target, credentials = self._grpc_target(address)
                    options = [*self._channel_options(), ("grpc.use_local_subchannel_pool", 1)]
                    channels = self._blocking[address] = [
                        grpc.insecure_channel(target, options=options) if credentials is None
                        else grpc.secure_channel(target, credentials, options=options)
                        for _ in range(BLOCKING_CHANNELS)]
                turn = self._calls[(address, method)] = itertools.cycle(
                    [c.unary_unary(method) for c in channels])
        return next(turn)

    def _channel_options(self) -> list[tuple[str, int]]:
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.enable_retries", 0)]  # the router retries itself, across endpoints

    # -- health checks ------------------------------------------------------------------------

    async def run_health_checks(self, tick: float = 0.2) -> None:
        """Check every endpoint at its service's interval until cancelled."""
        due: dict[int, float] = {}
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                now = time.monotonic()
                table = self.table
                for variant, proto, endpoint in table.endpoints():
                    check = table.services[variant.service].upstream.health_check
                    if not check.enabled or due.get(id(endpoint), 0) > now:
                        continue
                    due[id(endpoint)] = now + check.interval_seconds
                    task = asyncio.create_task(self._check(variant, proto, endpoint))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.sleep(tick)
        finally:  # checks in flight end with the loop, not after it is gone
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _check(self, variant: VariantRoute, proto: str, endpoint: Endpoint) -> None:
        check = self.table.services[variant.service].upstream.health_check \
            if variant.service in self.table.services else None
        if check is None:
            return
        try:
            if proto == "http":
                response = await self.client.request("GET", endpoint.address + check.path,
                                                     headers=[], body=b"",
                                                     timeout=check.timeout_seconds)
                ok = response.status == 200
                if ok and endpoint.speaks_protobuf is None:
                    endpoint.speaks_protobuf = await self._speaks_protobuf(
                        endpoint.address, check.timeout_seconds)
            else:
                ok = await self._grpc_ready(endpoint.address, check.timeout_seconds)
        except Exception:
            ok = False
        if not ok:
            endpoint.speaks_protobuf = None  # whatever answers next is asked again
        pool = variant.http if proto == "http" else variant.grpc
        changed = pool.record_check(endpoint, ok, healthy_after=check.healthy_threshold,
                                    unhealthy_after=check.unhealthy_threshold)
        self.metrics.endpoint_healthy.labels(variant.service, variant.name,
                                             endpoint.address).set(1 if endpoint.healthy else 0)
        if changed is not None:
            log.warning("%s of %s/%s is now %s", endpoint.address, variant.service, variant.name,
                        "healthy" if changed else "unhealthy")
            self._refresh(variant, proto, pool)
            if changed:
                self.holds.wake()

    def _refresh(self, variant: VariantRoute, proto: str, pool: Pool) -> None:
        """Recompute whether ``pool`` has a ready endpoint, and the same pool of the table in
        force (the check may have started on a table swapped out since; both share the
        endpoint)."""
        pool.refresh()
        service = self.table.services.get(variant.service)
        current = service.variants.get(variant.name) if service is not None else None
        if current is not None:
            (current.http if proto == "http" else current.grpc).refresh()

    async def _speaks_protobuf(self, address: str, timeout: float) -> bool | None:
        """Whether the server at ``address`` lists the protobuf-over-HTTP extension in its
        metadata; None when the answer says nothing either way (asked again next check)."""
        response = await self.client.request("GET", address + "/v2", headers=[], body=b"",
                                             timeout=timeout)
        if response.status != 200:
            return False if response.status in (404, 405) else None
        try:
            extensions = orjson.loads(response.body).get("extensions") or []
        except (orjson.JSONDecodeError, AttributeError):
            return False
        return PROTOBUF_EXTENSION in extensions

    async def _grpc_ready(self, address: str, timeout: float) -> bool:
        call = self.channel(address).unary_unary("/inference.GRPCInferenceService/ServerReady")
        answer: Any = await call(b"", timeout=timeout)
        return bytes(answer) == b"\x08\x01"  # ServerReadyResponse{ready: true}

    async def close(self) -> None:
        self.ready = False
        await self.shadower.close()
        await self.payloads.close()
        await self.client.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self.blocking_http.close()
        with self._blocking_lock:
            for channels in self._blocking.values():
                for blocking in channels:
                    blocking.close()
            self._blocking.clear()
            self._calls.clear()
