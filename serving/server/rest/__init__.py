"""The REST edge: OIP V2 (JSON and binary), KServe V1, repository extension and /metrics."""

from serving.server.rest.app import build_rest_app

__all__ = ["build_rest_app"]
