"""The Turnout router: traffic splitting, shadowing and inference graphs in front of model servers.

It depends on ``serving.protocol`` for request types and errors and never on the model server
itself. The process is built by ``router.server.RouterServer``; see docs/router.md.

The public names load on first use, so ``turnout serve`` (which registers the router's CLI
flags) does not pay for the router's config models at start-up.
"""

from __future__ import annotations

from typing import Any

import serving  # noqa: F401 - first: its guard decides compiled or source modules (serving/native.py)

__all__ = ["ConfigError", "RouterConfig", "load_config", "load_config_text", "parse_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from router import config

        return getattr(config, name)
    raise AttributeError(f"module 'router' has no attribute {name!r}")
