"""torch.export programs served by their verified ONNX copy where ONNX Runtime is faster.

The speed verdict is the machine's, so tests that are about verification and caching set the
required speed-up out of the way (``FASTER``), and one sets it out of reach; the real figures
are the benchmark's (loadtests/RESULTS.md). Tolerances are the verifier's: 1e-4 relative,
1e-5 absolute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from runtimes import torch_onnx
from runtimes.compiled import Tolerance
from runtimes.torch import TorchRuntime
from serving.runtime.settings import ModelSettings

LOGGER = "turnout.runtimes.compiled"
ROWS = np.random.default_rng(5).normal(size=(40, 16)).astype(np.float32)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TURNOUT_MODEL_CACHE", raising=False)


def _program(folder: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 3), torch.nn.Softmax(dim=-1)).eval()
    program = torch.export.export(module, (torch.zeros(2, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(folder / "model.pt2"))
    return folder / "model.pt2", module


def _load(path: Path, **parameters: object) -> TorchRuntime:
    runtime = TorchRuntime(ModelSettings(name="m", artifact=path, parameters=parameters))
    runtime.load()
    return runtime


def _own(module: torch.nn.Module) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(ROWS)).numpy()


def _logged_load(path: Path, caplog: pytest.LogCaptureFixture) -> TorchRuntime:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        return _load(path)


def _answer(runtime: TorchRuntime) -> np.ndarray:
    return runtime.predict({runtime.inputs[0].name: ROWS}, ["output-0"])["output-0"]


def test_a_program_is_served_by_its_verified_copy_and_later_starts_reuse_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch_onnx, "FASTER", 100.0)
    path, module = _program(tmp_path / "a")
    runtime = _logged_load(path, caplog)
    assert runtime._compiled is not None
    assert [s.name for s in runtime.outputs] == ["output-0"] and runtime.outputs[0].shape == (-1, 3)
    got = _answer(runtime)
    np.testing.assert_allclose(got, _own(module), rtol=1e-4, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (40, 3)
    line = [r.getMessage() for r in caplog.records if "compiled to ONNX by torch.onnx" in
            r.getMessage()]
    assert len(line) == 1 and "verified on 769 rows" in line[0]

    monkeypatch.setattr(torch.onnx, "export", _must_not_export)
    again = _logged_load(path, caplog)
    assert again._compiled is not None
    assert "serving the verified ONNX compilation" in caplog.text
    np.testing.assert_array_equal(_answer(again), got)


def _must_not_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("exported again")


def test_a_copy_that_is_not_faster_is_not_served_nor_exported_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch_onnx, "FASTER", 0.0)
    path, module = _program(tmp_path / "b")
    runtime = _logged_load(path, caplog)
    assert runtime._compiled is None
    assert "served by PyTorch: ONNX Runtime is not faster" in caplog.text
    np.testing.assert_array_equal(_answer(runtime), _own(module))
    monkeypatch.setattr(torch.onnx, "export", _must_not_export)
    assert _logged_load(path, caplog)._compiled is None
    assert "(an earlier start's verdict)" in caplog.text


def test_a_copy_that_answers_differently_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch_onnx, "FASTER", 100.0)
    monkeypatch.setattr(torch_onnx, "TOLERANCE", Tolerance(rtol=0.0, atol=0.0))
    monkeypatch.setattr(torch_onnx, "_probe_rows", lambda spec: ROWS * 1e3)  # float32 rounding
    path, _ = _program(tmp_path / "c")
    assert _logged_load(path, caplog)._compiled is None
    assert "the ONNX compilation differs from the model: output-0 differs by up to" in caplog.text


def test_compile_none_and_torchscript_are_served_by_pytorch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch_onnx, "FASTER", 100.0)
    monkeypatch.setattr(torch.onnx, "export", _must_not_export)
    path, module = _program(tmp_path / "d")
    assert _load(path, compile="none")._compiled is None
    script = tmp_path / "e" / "model.pt"
    script.parent.mkdir()
    torch.jit.save(torch.jit.trace(module, torch.zeros(2, 16)), str(script))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = TorchRuntime(ModelSettings(name="m", artifact=script, inputs=[
            {"name": "x", "datatype": "FP32", "shape": [-1, 16]}]))
        runtime.load()
    assert runtime._compiled is None
    assert "only torch.export programs (.pt2) are compiled" in caplog.text


def test_auto_mode_leaves_large_programs_to_pytorch_unless_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch_onnx, "FASTER", 100.0)
    path, _ = _program(tmp_path / "f")
    monkeypatch.setattr(torch_onnx, "AUTO_MAX_BYTES", path.stat().st_size - 1)
    assert _logged_load(path, caplog)._compiled is None
    assert "over the 0 MiB that compile: auto exports at load" in caplog.text
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _load(path, compile="onnx")._compiled is not None
