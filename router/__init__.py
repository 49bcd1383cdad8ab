"""The Turnout router: traffic splitting, shadowing and inference graphs in front of model servers.

It depends on ``serving.protocol`` for request types and errors and never on the model server
itself. The process is built by ``router.server.RouterServer``; see docs/router.md.
"""

from .config import ConfigError, RouterConfig, load_config, load_config_text, parse_config

__all__ = ["ConfigError", "RouterConfig", "load_config", "load_config_text", "parse_config"]
