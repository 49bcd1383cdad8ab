"""A runtime that fails on a share of requests, for the rollout analysis to catch."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime


class Flaky(Runtime):
    """Sums each row; raises on ``parameters.fail_ratio`` of the calls, as a buggy model would."""

    name = "flaky"
    platform = "test-flaky"
    execution = "inline"

    def load(self) -> None:
        self.declared([], [TensorSpec("y", "FP64", (-1,))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if random.random() < float(self.settings.parameters.get("fail_ratio", 0)):
            raise RuntimeError("flaky model failed")
        return {"y": next(iter(inputs.values())).sum(axis=1)}


class Slow(Runtime):
    """Sums each row after ``parameters.delay`` seconds, so requests stay in flight."""

    name = "slow"
    platform = "test-slow"
    execution = "thread"

    def load(self) -> None:
        self.declared([], [TensorSpec("y", "FP64", (-1,))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        import time

        time.sleep(float(self.settings.parameters.get("delay", 0.2)))
        return {"y": next(iter(inputs.values())).sum(axis=1)}


def fail_on_real_rows(x: np.ndarray) -> np.ndarray:
    """A scikit-learn ``FunctionTransformer`` step with a bug: it passes the sklearn runtime's
    load probe (a row of zeros) and raises on every real request, so a canary built on it is
    ready and answers 500s for the error-rate analysis to catch."""
    if np.any(x):
        raise ArithmeticError("feature code failed")
    return x
