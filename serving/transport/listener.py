"""The settings every public listener of a Turnout process takes: request bounds, TLS files,
logging and authentication (through :class:`~serving.transport.auth.AuthFields`).

The model server's and the router's settings inherit them, so a bound, a TLS file or a log
option means the same in both, with each process's own environment prefix
(``TURNOUT_MAX_HEADER_BYTES``, ``TURNOUT_ROUTER_MAX_HEADER_BYTES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from serving.transport.auth import AuthFields
from serving.transport.limits import HttpLimits


class ListenerFields(AuthFields):
    """Bounds (serving/transport/bounded.py, docs/security.md), TLS, logs, authentication."""

    max_payload_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                   description="Largest request body, REST and gRPC alike (bytes)")
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
    log_level: str = Field("info", description="Python logging level name")
    log_format: Literal["text", "json"] = Field("text", description="json for log collectors")
    tls_cert: Path | None = Field(None, description="PEM certificate chain: the public REST and "
                                  "gRPC ports serve TLS (reloaded when the file changes)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: clients must present a "
                                       "certificate it signed (mTLS)")

    @model_validator(mode="after")
    def _server_tls_files(self) -> ListenerFields:
        """A missing or unreadable certificate stops the start, not the first handshake."""
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
