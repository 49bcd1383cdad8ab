"""Runtimes whose failures carry what a client must never see: absolute paths of this machine,
tracebacks (loaded by import path from tests/security/test_clean_errors.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime

SECRET_DIR = "/opt/turnout-secret-dir"


class LeakyLoad(Runtime):
    """Fails to load naming a file outside the repository and one inside it."""

    name = "leaky-load"
    platform = "test-leaky"

    def load(self) -> None:
        inside = self.settings.artifact / "weights.bin"
        raise OSError(f"cannot open {SECRET_DIR}/weights.bin (nor {inside}): permission denied")

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise AssertionError("never loaded")


class LeakyPredict(Runtime):
    """Loads, then raises from predict with a path and internals in the message."""

    name = "leaky-predict"
    platform = "test-leaky"
    execution = "inline"

    def load(self) -> None:
        self.declared([], [TensorSpec("y", "FP32", (-1, 2))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise RuntimeError(f"segfault-ish failure in {SECRET_DIR}/libmodel.so at 0xdeadbeef")


class Abstract(Runtime):
    """A runtime class that cannot even be made (no predict): one broken model, not a server
    that fails to start."""

    name = "abstract"
    platform = "test-abstract"
