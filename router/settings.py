"""The router process's settings, from CLI flags and ``TURNOUT_ROUTER_`` variables.

Built once in the composition root; routing itself lives in the routes file, not here, so
that it can be reloaded without restarting the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from serving.transport.listener import ListenerFields
from serving.transport.tracing import TracingFields

if TYPE_CHECKING:
    from serving.transport.tls import ClientTls


class RouterSettings(ListenerFields, TracingFields):
    """The router's settings; bounds, TLS, logs and authentication
    come from :class:`~serving.transport.listener.ListenerFields`."""

    model_config = SettingsConfigDict(env_prefix="TURNOUT_ROUTER_", extra="ignore")

    config: Path = Field(description="The routes YAML file")
    host: str = Field("127.0.0.1", description="Bind address of the public REST and gRPC ports")
    http_port: int = Field(8080, ge=0, description="Public REST port (KServe's default)")
    grpc_port: int = Field(8081, ge=0, description="Public gRPC port; 0 disables gRPC")
    admin_host: str = Field("127.0.0.1", description="Admin API bind address; loopback because "
                            "whoever reaches it can redirect all traffic")
    admin_port: int = Field(8090, ge=0, description="Admin API port; 0 disables it")
    admin_token_file: Path | None = Field(
        None, description="File holding the admin API's bearer token (created with a fresh "
        "token, mode 0600, if missing; re-read when it changes). Default: a fresh token at "
        "every start in <config>.admin-token (or a private temporary folder)")
    grpc_engine: Literal["loop", "threaded"] = Field(
        "loop", description="loop: the gRPC edge on the router's event loop (Turnout's HTTP/2 "
        "server, serving/transport/h2grpc), calls awaiting their hop as REST requests do; "
        "threaded: grpcio's thread-pool server, each call's thread waiting on its hop")
    grpc_threads: int = Field(64, ge=1, description="threaded engine: gRPC calls forwarded at "
                              "once (handler threads), up to 16x more wait; loop engine: up to "
                              "16x this many calls at once. Beyond that RESOURCE_EXHAUSTED")
    reload_poll_seconds: float = Field(2.0, ge=0, description="How often the routes file's "
                                       "modification time is checked; 0 disables (SIGHUP and "
                                       "the admin API still reload)")
    drain_seconds: float = Field(30.0, ge=0, description="Grace for in-flight requests on SIGTERM")
    admin_tls: bool | None = Field(None, description="The admin API serves TLS with the same "
                                   "files; default: when TLS is on and the admin API is not "
                                   "bound to loopback")
    upstream_ca: Path | None = Field(None, description="PEM CA bundle that https:// and grpcs:// "
                                     "upstream endpoints' certificates must chain to (default: "
                                     "the system's trust store)")
    upstream_cert: Path | None = Field(None, description="Client certificate presented to TLS "
                                       "upstreams that require one")
    upstream_key: Path | None = Field(None, description="PEM private key of upstream_cert")

    @model_validator(mode="after")
    def _upstream_tls_files(self) -> RouterSettings:
        from serving.transport.tls import client_context

        upstream = self.upstream_tls()
        if upstream.ca or upstream.cert:
            client_context(upstream)  # a missing or bad file is refused at start
        if self.admin_tls and self.tls_cert is None:
            raise ValueError("admin_tls needs tls_cert and tls_key")
        return self

    def upstream_tls(self) -> ClientTls:
        from serving.transport.tls import client_tls

        return client_tls(self.upstream_ca, self.upstream_cert, self.upstream_key)

    @property
    def admin_serves_tls(self) -> bool:
        if self.admin_tls is not None:
            return self.admin_tls
        return self.tls_cert is not None and self.admin_host not in ("127.0.0.1", "::1",
                                                                     "localhost")

