"""The router process's settings, from CLI flags and ``TURNOUT_ROUTER_`` variables.

Built once in the composition root; routing itself lives in the routes file, not here, so
that it can be reloaded without restarting the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from serving.transport.auth import AuthFields


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
    reload_poll_seconds: float = Field(2.0, ge=0, description="How often the routes file's "
                                       "modification time is checked; 0 disables (SIGHUP and "
                                       "the admin API still reload)")
    drain_seconds: float = Field(30.0, ge=0, description="Grace for in-flight requests on SIGTERM")
    log_level: str = Field("info", description="Python logging level name")
    log_format: Literal["text", "json"] = Field("text", description="json for log collectors")
