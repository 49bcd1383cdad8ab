"""The gRPC edge: Open Inference Protocol service, health checking and reflection."""

from serving.server.grpc.server import SetServing, build_grpc_server
from serving.server.grpc.servicer import InferenceServicer

__all__ = ["InferenceServicer", "SetServing", "build_grpc_server"]
