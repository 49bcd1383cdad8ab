"""Where predict runs: microsecond models inline, slow ones in threads, overrides honoured."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime
from serving.runtime.settings import ModelSettings
from serving.server.execution import INLINE_BUDGET_S, resolve_execution


class Timed(Runtime):
    name = "timed"
    platform = "test"
    execution = "auto"

    def load(self) -> None:
        self.declared([TensorSpec("x", "FP32", (-1, 3))], [TensorSpec("y", "FP32", (-1, 3))])

    def predict(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        time.sleep(float(self.settings.parameters.get("delay", 0)))
        return {"y": inputs["x"] + 1}


def _runtime(tmp_path, **settings) -> Timed:
    runtime = Timed(ModelSettings(name="m", artifact=tmp_path, **settings))
    runtime.load()
    return runtime


def test_fast_model_runs_inline(tmp_path):
    assert resolve_execution(_runtime(tmp_path)) == "inline"


def test_slow_model_runs_in_threads(tmp_path):
    runtime = _runtime(tmp_path, parameters={"delay": INLINE_BUDGET_S * 4})
    assert resolve_execution(runtime) == "thread"
    assert runtime.execution == "thread"


def test_settings_override_the_timing(tmp_path):
    assert resolve_execution(_runtime(tmp_path, execution="thread")) == "thread"
    slow = _runtime(tmp_path, execution="inline", parameters={"delay": 0.01})
    assert resolve_execution(slow) == "inline"
