"""The gRPC edge: Open Inference Protocol service, health checking and reflection."""

from .server import SetServing, build_grpc_server
from .servicer import InferenceServicer

__all__ = ["InferenceServicer", "SetServing", "build_grpc_server"]
