"""The bounds of an HTTP listener, and the flags that set them (server and router alike).

Kept apart from ``bounded.py`` (which imports uvicorn) so settings and CLIs read it cheaply.
docs/security.md, "Limits and hostile input", lists each limit and what it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_HEADER_BYTES = 64 * 1024  # request line + headers; browsers and proxies stay far below


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = MAX_HEADER_BYTES   # request line + headers: 431 past it
    max_header_count: int = 100                # headers in one request: 431 past it
    max_url_bytes: int = 8 * 1024              # request target: 414 past it
    header_timeout: float = 10.0               # seconds from a head's first byte to its end: 408
    body_timeout: float = 10.0                 # window over which body_min_rate is judged: 408
    body_min_rate: float = 1024.0              # body bytes per second a client must keep up
    keep_alive_timeout: float = 5.0            # idle seconds before a connection is closed


def add_limit_flags(parser: Any) -> None:
    """The flags of :class:`HttpLimits` on an argparse parser; their ``dest`` names are the
    settings' field names (``ServerSettings``, ``RouterSettings``)."""
    d = HttpLimits()
    parser.add_argument("--max-header-bytes", type=int, help="largest request head, request "
                        f"line + headers (default {d.max_header_bytes}); 431 past it")
    parser.add_argument("--max-header-count", type=int, help="most headers in one request "
                        f"(default {d.max_header_count}); 431 past it")
    parser.add_argument("--max-url-bytes", type=int, help="longest request target "
                        f"(default {d.max_url_bytes}); 414 past it")
    parser.add_argument("--header-timeout", dest="header_timeout_seconds", type=float,
                        help="seconds a request head may take from its first byte "
                        f"(default {d.header_timeout:g}); 408 past it")
    parser.add_argument("--body-timeout", dest="body_timeout_seconds", type=float,
                        help="window in seconds over which a body must keep --body-min-rate "
                        f"(default {d.body_timeout:g}); 408 when slower")
    parser.add_argument("--body-min-rate", dest="body_min_bytes_per_second", type=float,
                        help=f"slowest request body in bytes/s (default {d.body_min_rate:g})")
    parser.add_argument("--keep-alive-timeout", dest="keep_alive_seconds", type=float,
                        help="idle seconds before a client connection is closed "
                        f"(default {d.keep_alive_timeout:g})")
