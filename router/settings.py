"""The router process's settings, from CLI flags and ``TURNOUT_ROUTER_`` variables.

Built once in the composition root; routing itself lives in the routes file, not here, so
that it can be reloaded without restarting the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from serving.transport.auth import AuthFields
from serving.transport.limits import HttpLimits

if TYPE_CHECKING:
    from serving.transport.tls import ClientTls


class RouterSettings(AuthFields):
    """The router's settings; authentication's (API keys, JWT, --insecure) come from
    :class:`~serving.transport.auth.AuthFields`."""

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
    grpc_threads: int = Field(64, ge=1, description="gRPC calls forwarded at once (handler "
                              "threads); up to 16x more wait, beyond that RESOURCE_EXHAUSTED")
    max_payload_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                   description="Largest request, REST and gRPC alike (bytes)")
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
    reload_poll_seconds: float = Field(2.0, ge=0, description="How often the routes file's "
                                       "modification time is checked; 0 disables (SIGHUP and "
                                       "the admin API still reload)")
    drain_seconds: float = Field(30.0, ge=0, description="Grace for in-flight requests on SIGTERM")
    log_level: str = Field("info", description="Python logging level name")
    log_format: Literal["text", "json"] = Field("text", description="json for log collectors")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: the public REST and "
                                  "gRPC ports serve TLS (reloaded when the file changes)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: clients must present a "
                                       "certificate it signed (mTLS)")
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
    def _tls_files(self) -> RouterSettings:
        from serving.transport.tls import check_server_tls, client_context, server_tls

        check_server_tls(server_tls(self.tls_cert, self.tls_key, self.tls_client_ca))
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

    def http_limits(self) -> HttpLimits:
        """The bounds of the HTTP listeners."""
        return HttpLimits(max_header_bytes=self.max_header_bytes,
                          max_header_count=self.max_header_count, max_url_bytes=self.max_url_bytes,
                          header_timeout=self.header_timeout_seconds,
                          body_timeout=self.body_timeout_seconds,
                          body_min_rate=self.body_min_bytes_per_second,
                          keep_alive_timeout=self.keep_alive_seconds)
