"""Small real runtimes that tests load by import path (``runtime: turnout_test_runtimes:Echo``).

They exist to exercise what no framework model can: every OIP datatype, a predict that
raises, a predict that takes a known time. Each computes a real result from its input.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime


class Echo(Runtime):
    """Returns its input unchanged as ``y``: the datatype under test round-trips exactly."""

    name = "echo"
    platform = "test-echo"
    execution = "inline"

    def load(self) -> None:
        spec = self.settings.inputs[0]
        self.declared([], [TensorSpec("y", spec.datatype, tuple(spec.shape))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return {"y": next(iter(inputs.values()))}


class Failing(Runtime):
    """Raises inside predict, as a buggy model would."""

    name = "failing"
    platform = "test-failing"

    def load(self) -> None:
        self.declared([], [TensorSpec("y", "FP32", (-1, 2))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        raise RuntimeError("division by zero in layer 3")


class Slow(Runtime):
    """Doubles its input after ``parameters.delay`` seconds, to hold requests in flight."""

    name = "slow"
    platform = "test-slow"

    def load(self) -> None:
        self.declared([], [TensorSpec("y", "FP32", (-1, 2))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(float(self.settings.parameters.get("delay", 0.5)))
        return {"y": next(iter(inputs.values())) * 2}


class FixedCost(Runtime):
    """Doubles its input after ``parameters.fixed`` seconds per call plus ``parameters.per_row``
    seconds per row: a model whose batching payoff the test controls. Timed at load like the
    framework runtimes (``execution = "auto"``)."""

    name = "fixed-cost"
    platform = "test-fixed-cost"
    execution = "auto"

    def load(self) -> None:
        self.declared([], [TensorSpec("y", "FP32", (-1, 2))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        x = next(iter(inputs.values()))
        params = self.settings.parameters
        _spin(float(params.get("fixed", 0.002)) + float(params.get("per_row", 0.0)) * len(x))
        return {"y": x * 2}


def _spin(seconds: float) -> None:
    """Wait precisely (sleep overshoots by tens of µs) without holding the GIL for long."""
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(min(left, 0.0002) if left > 0.0003 else 0)
