"""Where downloaded models and compiled copies are cached: one folder shared by every process.

Lives with the runtime base because runtimes (the ONNX compiler) and the storage resolver both
need it, and runtimes may import nothing above the runtime base.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TURNOUT_MODEL_CACHE"


def default_cache_dir() -> Path:
    """``$TURNOUT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/turnout/models`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "turnout" / "models"
