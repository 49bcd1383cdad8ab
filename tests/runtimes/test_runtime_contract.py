"""The contract every built-in runtime keeps with the data plane, checked on real models."""

from __future__ import annotations

import gc
import re
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from runtimes.lightgbm import LightGBMRuntime
from runtimes.onnx import OnnxRuntime
from runtimes.python import PythonRuntime
from runtimes.sklearn import SklearnRuntime
from runtimes.tensorflow import TensorFlowRuntime
from runtimes.torch import TorchRuntime
from runtimes.xgboost import XGBoostRuntime
from serving.protocol.datatypes import DATATYPES, datatype_of
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime, available_runtimes, find_artifact
from serving.runtime.settings import ModelSettings

if TYPE_CHECKING:
    from conftest import ModelCase

# Runtimes that read an artifact file; the python runtime runs a class and reads what it likes.
RUNTIMES: list[type[Runtime]] = [SklearnRuntime, XGBoostRuntime, OnnxRuntime, LightGBMRuntime,
                                 TorchRuntime, TensorFlowRuntime]


def assert_same(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, name
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=name)


@pytest.mark.parametrize("cls", RUNTIMES, ids=lambda c: c.name)
def test_runtime_is_registered_with_its_class_attributes(cls: type[Runtime]) -> None:
    assert available_runtimes()[cls.name] is cls
    assert cls.platform and cls.execution == "auto"  # timed at load: see serving/execution.py
    # a suffix or a whole file name ("model.txt", "saved_model.pb")
    assert cls.artifact_suffixes and all("." in s for s in cls.artifact_suffixes)


def test_python_runtime_is_registered_and_runs_in_threads() -> None:
    assert available_runtimes()["python"] is PythonRuntime
    assert PythonRuntime.execution == "thread"  # user code may block the loop


def test_load_declares_real_metadata(case: ModelCase) -> None:
    runtime = case.load()
    assert len(runtime.inputs) == 1
    (spec,) = runtime.inputs
    assert spec.datatype in DATATYPES
    assert spec.shape == (-1, case.n_features)
    assert tuple(out.name for out in runtime.outputs) == case.outputs
    for out in runtime.outputs:
        assert out.datatype in DATATYPES
        assert out.shape[0] == -1, out
    assert runtime.default_outputs
    assert set(runtime.default_outputs) <= set(case.outputs)


@pytest.mark.parametrize("rows", [1, 64])
def test_predict_equals_the_framework(case: ModelCase, rows: int) -> None:
    runtime = case.load()
    inputs = case.batch(runtime, rows)
    result = runtime.predict(inputs, list(case.outputs))
    assert list(result) == list(case.outputs)
    expected = case.reference(next(iter(inputs.values())))
    declared = {out.name: out for out in runtime.outputs}
    for name, array in result.items():
        assert isinstance(array, np.ndarray)
        assert array.shape[0] == rows
        assert datatype_of(array) == declared[name].datatype
        assert array.shape[1:] == declared[name].shape[1:]
        assert_same(array, expected[name], name)


def test_predict_computes_only_the_requested_output(case: ModelCase) -> None:
    runtime = case.load()
    inputs = case.batch(runtime, 5, seed=2)
    expected = case.reference(next(iter(inputs.values())))
    for name in case.outputs:
        result = runtime.predict(inputs, [name])
        assert list(result) == [name]
        assert_same(result[name], expected[name], name)


def test_unload_releases_the_model_and_load_works_again(case: ModelCase) -> None:
    runtime = case.load()
    model = weakref.ref(runtime.model)  # type: ignore[attr-defined]
    runtime.unload()
    gc.collect()
    assert model() is None
    runtime.load()
    inputs = case.batch(runtime, 3)
    assert runtime.predict(inputs, runtime.default_outputs)


def test_file_and_version_folder_load_the_same(artifact_case: ModelCase) -> None:
    case = artifact_case
    file = find_artifact(case.artifact, case.runtime.artifact_suffixes)
    from_file, from_folder = case.load(file), case.load(file.parent)
    assert (from_file.inputs, from_file.outputs) == (from_folder.inputs, from_folder.outputs)


@pytest.mark.parametrize(("cls", "suffix"),
                         [(cls, suffix) for cls in RUNTIMES for suffix in cls.artifact_suffixes])
def test_garbage_artifact_is_a_load_error_naming_the_file(
        tmp_path: Path, cls: type[Runtime], suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x80\x04not a model at all\x00\xff" * 8)
    with pytest.raises(ModelLoadError, match=re.escape(f"garbage{suffix}")):
        cls(ModelSettings(name="m", artifact=path)).load()


def test_truncated_artifact_is_a_load_error(artifact_case: ModelCase, tmp_path: Path) -> None:
    case = artifact_case
    real = find_artifact(case.artifact, case.runtime.artifact_suffixes)
    broken = tmp_path / real.name
    broken.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=real.name):
        case.load(broken)


def test_settings_overrides_replace_inferred_metadata(case: ModelCase) -> None:
    inferred = case.load()
    spec, out = inferred.inputs[0], inferred.outputs[-1]
    runtime = case.load(
        inputs=[{"name": spec.name, "datatype": spec.datatype, "shape": [16, case.n_features]}],
        outputs=[{"name": out.name, "datatype": out.datatype, "shape": [16, *out.shape[1:]]}])
    assert runtime.inputs == [TensorSpec(spec.name, spec.datatype, (16, case.n_features))]
    assert runtime.outputs == [TensorSpec(out.name, out.datatype, (16, *out.shape[1:]))]
    assert runtime.default_outputs == [out.name]
    inputs = case.batch(runtime, 16)
    expected = case.reference(next(iter(inputs.values())))
    assert_same(runtime.predict(inputs, [out.name])[out.name], expected[out.name], out.name)


def test_declaring_an_output_the_model_lacks_is_a_load_error(case: ModelCase) -> None:
    with pytest.raises(ModelLoadError, match="no-such-output"):
        case.load(outputs=[{"name": "no-such-output", "datatype": "FP32"}])


def test_empty_version_folder_is_a_load_error(artifact_case: ModelCase, tmp_path: Path) -> None:
    case = artifact_case
    with pytest.raises(ModelLoadError, match="no artifact"):
        case.load(tmp_path)

