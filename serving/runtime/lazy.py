"""Import a framework on first use, so that finding a runtime by artifact suffix (which loads
every registered runtime class) never imports torch, TensorFlow or XGBoost it will not use.
That keeps cold start and idle memory down to the frameworks actually served."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)
