"""gRPC on the asyncio event loop: HTTP/2 framing (connection.py), calls with grpc.aio's
handler contract (calls.py) and the server that takes grpc's handlers (server.py)."""

from serving.transport.h2grpc.server import GrpcServer

__all__ = ["GrpcServer"]
