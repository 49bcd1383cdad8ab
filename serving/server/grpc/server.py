"""Builds the gRPC server: the inference service, grpc.health.v1 and server reflection.

The inference messages live in a private descriptor pool (see ``serving.protocol.proto``), so
the service is registered with generic method handlers rather than a ``_pb2_grpc`` module, and
reflection is given a pool that holds every served file, so grpcurl needs no .proto.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from serving.protocol import proto
from serving.server.dataplane import DataPlane
from serving.server.grpc.servicer import InferenceServicer, method_handlers
from serving.server.settings import ServerSettings

HEALTH_SERVICES = ("", proto.SERVICE_NAME)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SetServing = Callable[[bool], None]


class _HealthServicer(health.aio.HealthServicer):
    """The standard asyncio health servicer, plus a synchronous switch for draining.

    The base class only offers an async ``set``; writing its status table directly lets the
    server be built synchronously, answer checks from its first request, and flip status at
    once when draining starts (the next Check sees it, however soon it comes).
    """

    def __init__(self, services: tuple[str, ...]) -> None:
        super().__init__()
        self._services = services
        self._notifying: set[asyncio.Task[None]] = set()
        self._server_status.update({service: _SERVING for service in services})

    def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for every served name; call it on the server's event loop."""
        status = _SERVING if serving else _NOT_SERVING
        loop = asyncio.get_running_loop()
        for service in self._services:
            self._server_status[service] = status
            # set() also wakes open Watch streams, which needs the loop.
            task = loop.create_task(self.set(service, status))
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A private pool with every file the server serves: inference, health and reflection."""
    pool = descriptor_pool.DescriptorPool()
    for serialized in (proto.FILE_DESCRIPTOR, health_pb2.DESCRIPTOR.serialized_pb,
                       reflection_pb2.DESCRIPTOR.serialized_pb):
        pool.AddSerializedFile(serialized)
    return pool


def bind_address(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals as gRPC expects."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_port(server: grpc.Server | grpc.aio.Server, address: str,
              credentials: grpc.ServerCredentials | None) -> None:
    """Listen on ``address``, with TLS when given ``credentials``."""
    bound = server.add_secure_port(address, credentials) if credentials is not None \
        else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")


def build_grpc_server(dataplane: DataPlane, settings: ServerSettings, *,
                      credentials: grpc.ServerCredentials | None = None,
                      interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
                      ) -> tuple[grpc.aio.Server, SetServing]:
    """A bound, not yet started, asyncio gRPC server over ``dataplane``, and its health switch.

    Call the switch with False (on the event loop) when draining begins, so health checks
    answer NOT_SERVING and load balancers stop routing before the server stops.

    Message limits equal ``max_payload_bytes`` (gRPC answers RESOURCE_EXHAUSTED beyond them,
    as REST answers 413), and SO_REUSEPORT lets several worker processes share the port.
    ``credentials`` (serving/transport/tls.py) makes the port TLS; ``interceptors`` see every
    call first (authentication: serving/transport/grpc_auth.py).
    """
    limit = settings.max_payload_bytes
    server = grpc.aio.server(interceptors=list(interceptors) or None, options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1),
    ])
    handlers = method_handlers(InferenceServicer(dataplane))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(proto.SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(proto.SERVICE_NAME, handlers)

    health_servicer = _HealthServicer(HEALTH_SERVICES)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    reflection.enable_server_reflection(
        (proto.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server,
        pool=reflection_pool())

    bind_port(server, bind_address(settings.host, settings.grpc_port), credentials)
    return server, health_servicer.set_serving
