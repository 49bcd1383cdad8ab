"""One typed settings object for the model server, from CLI flags and ``TURNOUT_`` variables.

Built once in the composition root; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from serving.transport.auth import AuthFields
from serving.transport.limits import HttpLimits


class ServerSettings(AuthFields):
    """The model server's settings; authentication's (API keys, JWT, --insecure) come from
    :class:`~serving.transport.auth.AuthFields`."""

    model_config = SettingsConfigDict(env_prefix="TURNOUT_", extra="ignore",
                                      protected_namespaces=())

    model_path: Path | None = Field(None, description="A model file, model folder or folder of models")
    model_name: str | None = Field(None, description="Name for a single model path")
    model_version: str | None = Field(None, pattern=r"^[0-9]{1,18}$",
                                      description="Version a single unversioned model path "
                                      "reports (its registry version); default 1")
    model_class: str | None = Field(None, description="module:Class of a custom Python model "
                                    "that serves model_path")
    runtime: str | None = Field(None, description="Runtime the model must be served by (what "
                                "a manifest's modelFormat asks for); an artifact of another "
                                "framework is then an error instead of a silent switch")
    trusted_sources: list[str] = Field(
        default_factory=list, description="URI prefixes whose pickle files (joblib, pkl) may be "
        "loaded; '*' trusts every source. Local paths are always trusted")
    host: str = Field("127.0.0.1", description="Bind address; loopback unless told otherwise "
                      "(container images set 0.0.0.0)")
    http_port: int = Field(8080, description="REST port (KServe's default)")
    grpc_port: int = Field(8081, description="gRPC port (KServe's default); 0 disables gRPC")
    grpc_engine: Literal["threaded", "aio"] = Field(
        "threaded", description="threaded: grpcio's thread-pool server, fastest per call; "
        "aio: grpc.aio on the event loop")
    grpc_threads: int = Field(8, ge=1, description="Handler threads of the threaded gRPC engine")
    max_batch_size: int | None = Field(None, ge=1, description="Adaptive batching for every model "
                                       "whose settings declare none (rows per merged call)")
    max_batch_latency_ms: float = Field(2.0, ge=0, description="With max_batch_size: how long "
                                        "a batch waits to fill (ms)")
    max_payload_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                   description="Largest request body, REST and gRPC alike (bytes)")
    # Bounds on every HTTP request (serving/transport/bounded.py, docs/security.md).
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest request head "
                                  "(request line + headers, bytes): 431 and close past it")
    max_header_count: int = Field(100, ge=1, description="Most headers in one request: 431")
    max_url_bytes: int = Field(8 * 1024, ge=64, description="Longest request target (bytes): 414")
    header_timeout_seconds: float = Field(10.0, gt=0, description="A request head must arrive "
                                          "whole within this many seconds of its first byte: 408")
    body_timeout_seconds: float = Field(10.0, gt=0, description="Window over which a request "
                                        "body's rate is judged: 408 when slower than the floor")
    body_min_bytes_per_second: float = Field(1024.0, ge=0, description="Slowest a request body "
                                             "may arrive (bytes/s, over each window)")
    keep_alive_seconds: float = Field(5.0, gt=0, description="Idle seconds before a client "
                                      "connection is closed (also one that never sends a byte)")
    inference_threads: int = Field(4, ge=1, description="Threads that run blocking predict calls; "
                                   "bounded so a burst cannot spawn unbounded threads")
    drain_seconds: float = Field(30.0, ge=0, description="Grace period for in-flight requests "
                                 "after SIGTERM before the process exits")
    workers: int = Field(1, ge=1, description="Server processes sharing the ports (SO_REUSEPORT); "
                         "models load once before the fork and are shared copy-on-write")
    log_level: str = Field("info", description="Python logging level name")
    log_format: Literal["text", "json"] = Field("text", description="json for log collectors")
    server_name: str = "turnout"
    tls_cert: Path | None = Field(None, description="PEM certificate chain: REST and gRPC serve "
                                  "TLS (reloaded when the file changes)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: clients must present a "
                                       "certificate it signed (mTLS)")

    @model_validator(mode="after")
    def _tls_files(self) -> ServerSettings:
        from serving.transport.tls import check_server_tls, server_tls

        check_server_tls(server_tls(self.tls_cert, self.tls_key, self.tls_client_ca))
        return self

    def http_limits(self) -> HttpLimits:
        """The bounds of the HTTP listeners."""
        return HttpLimits(max_header_bytes=self.max_header_bytes,
                          max_header_count=self.max_header_count, max_url_bytes=self.max_url_bytes,
                          header_timeout=self.header_timeout_seconds,
                          body_timeout=self.body_timeout_seconds,
                          body_min_rate=self.body_min_bytes_per_second,
                          keep_alive_timeout=self.keep_alive_seconds)

    def default_batching(self) -> dict[str, float] | None:
        """Batching settings for models that declare none, from ``--max-batch-size``."""
        if self.max_batch_size is None:
            return None
        return {"max_batch_size": self.max_batch_size,
                "max_latency_ms": self.max_batch_latency_ms}
