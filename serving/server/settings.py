"""One typed settings object for the model server, from CLI flags and ``TURNOUT_`` variables.

Built once in the composition root; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from serving.transport.listener import ListenerFields
from serving.transport.tracing import TracingFields


class ServerSettings(ListenerFields, TracingFields):
    """The model server's settings; bounds, TLS, logs and authentication
    come from :class:`~serving.transport.listener.ListenerFields`."""

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
    grpc_engine: Literal["loop", "threaded", "aio"] = Field(
        "loop", description="loop: Turnout's HTTP/2 gRPC server on the event loop "
        "(serving/transport/h2grpc), the fastest per call; threaded: grpcio's thread-pool "
        "server; aio: grpc.aio on the event loop")
    grpc_threads: int = Field(8, ge=1, description="Handler threads of the threaded gRPC engine")
    grpc_idle_seconds: float = Field(300.0, ge=0, description="The loop gRPC engine closes a "
                                     "connection with no open call for this long (GOAWAY, "
                                     "clients reconnect on their next call); 0: never")
    max_batch_size: int | None = Field(None, ge=1, description="Adaptive batching for every model "
                                       "whose settings declare none (rows per merged call)")
    max_batch_latency_ms: float = Field(2.0, ge=0, description="With max_batch_size: how long "
                                        "a batch waits to fill (ms)")
    inference_threads: int = Field(4, ge=1, description="Threads that run blocking predict calls; "
                                   "bounded so a burst cannot spawn unbounded threads")
    drain_seconds: float = Field(30.0, ge=0, description="Grace period for in-flight requests "
                                 "after SIGTERM before the process exits")
    strict_readiness: bool = Field(True, description="Ready only while every model the server "
                                   "holds is READY (Triton's default); false: a model that "
                                   "failed to load leaves the server ready")
    workers: int = Field(1, ge=1, description="Server processes sharing the ports (SO_REUSEPORT); "
                         "models load once before the fork and are shared copy-on-write")
    server_name: str = "turnout"
    # A transformer (runtimes/transformer, docs/transformers.md): model_path's model_class runs
    # in front of a predictor, its predict being the call to it.
    transformer_for: str | None = Field(
        None, description="Serve model_class as a transformer in front of this predictor: "
        "HOST:PORT (several, comma-separated, taken in turn) or @FILE, a JSON file of ready "
        "addresses the local control plane keeps current")
    predictor_protocol: Literal["v1", "v2", "grpc-v2"] = Field(
        "v2", description="How a transformer calls its predictor: REST V2 (binary tensors), "
        "REST V1, or gRPC (KServe's --protocol)")
    predictor_model: str | None = Field(None, description="The model name at the predictor; "
                                        "default the transformer's own")
    predictor_timeout_seconds: float = Field(60.0, gt=0, description="A transformer's wait "
                                             "for its predictor's answer: 504 after it")
    predictor_ca: Path | None = Field(None, description="A transformer calls its predictor over "
                                      "TLS, verifying it against this CA bundle (PEM)")
    predictor_cert: Path | None = Field(None, description="With predictor_ca: the client "
                                        "certificate a predictor requiring mTLS checks")
    predictor_key: Path | None = Field(None, description="The private key of predictor_cert")

    def model_overrides(self) -> dict[str, Any] | None:
        """Settings imposed on the served model: a transformer's runtime and predictor."""
        if self.transformer_for is None:
            return None
        from runtimes.transformer import RUNTIME, predictor_parameters

        return {"runtime": RUNTIME, "parameters": predictor_parameters(
            host=self.transformer_for, protocol=self.predictor_protocol,
            model=self.predictor_model, timeout=self.predictor_timeout_seconds,
            ca=self.predictor_ca, cert=self.predictor_cert, key=self.predictor_key)}


    def default_batching(self) -> dict[str, float] | None:
        """Batching settings for models that declare none, from ``--max-batch-size``."""
        if self.max_batch_size is None:
            return None
        return {"max_batch_size": self.max_batch_size,
                "max_latency_ms": self.max_batch_latency_ms}
