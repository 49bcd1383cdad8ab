"""ONNX specifics: metadata from the graph, thread settings, output selection, non-tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from runtimes.onnx import OnnxRuntime, session_runner
from serving.protocol.errors import InvalidInput, ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.settings import ModelSettings

if TYPE_CHECKING:
    from conftest import ModelCase


def load(path: Path, **settings: Any) -> OnnxRuntime:
    runtime = OnnxRuntime(ModelSettings(name="m", artifact=path, **settings))
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def strings_and_ints(graph_saver: Callable[..., Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two inputs of other datatypes: a string echo and an INT64 → DOUBLE cast."""
    return graph_saver(
        tmp_path_factory.mktemp("onnx-types") / "model.onnx",
        [helper.make_node("Identity", ["s"], ["s_out"]),
         helper.make_node("Cast", ["i"], ["d"], to=TensorProto.DOUBLE)],
        [helper.make_tensor_value_info("s", TensorProto.STRING, [None]),
         helper.make_tensor_value_info("i", TensorProto.INT64, ["n", 2])],
        [helper.make_tensor_value_info("s_out", TensorProto.STRING, [None]),
         helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["n", 2])])


class RecordingSession:
    """Wraps the session call to see which outputs the runtime asks for."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.requested: list[list[str]] = []

    def run(self, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.requested.append(list(names))
        return self._run(names, feeds)  # type: ignore[no-any-return]


def test_symbolic_batch_dimension_is_minus_one(onnx_matmul: ModelCase) -> None:
    runtime = onnx_matmul.load()
    assert runtime.inputs == [TensorSpec("x", "FP32", (-1, 3))]
    assert runtime.outputs == [TensorSpec("y", "FP32", (-1, 2))]
    weights, bias = onnx_matmul.model
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(runtime.predict({"x": rows}, ["y"])["y"], rows @ weights + bias,
                               rtol=1e-5)


def test_element_types_map_to_protocol_datatypes(strings_and_ints: Path) -> None:
    runtime = load(strings_and_ints)
    assert runtime.inputs == [TensorSpec("s", "BYTES", (-1,)), TensorSpec("i", "INT64", (-1, 2))]
    assert runtime.outputs == [TensorSpec("s_out", "BYTES", (-1,)),
                               TensorSpec("d", "FP64", (-1, 2))]


def test_bytes_inputs_reach_the_graph_as_text(strings_and_ints: Path) -> None:
    runtime = load(strings_and_ints)
    inputs = {"s": np.array([b"caf\xc3\xa9", b"x"], dtype=object),
              "i": np.array([[1, 2], [3, 4]], dtype=np.int64)}
    result = runtime.predict(inputs, ["s_out", "d"])
    assert result["s_out"].tolist() == ["café", "x"]
    np.testing.assert_array_equal(result["d"], [[1.0, 2.0], [3.0, 4.0]])
    inputs["s"] = np.array([b"\xff\xfe", b"x"], dtype=object)
    with pytest.raises(InvalidInput, match="UTF-8"):
        runtime.predict(inputs, ["s_out"])


def test_converted_classifier_matches_sklearn(onnx_logreg: ModelCase) -> None:
    runtime = onnx_logreg.load()
    assert runtime.outputs == [TensorSpec("label", "INT64", (-1,)),
                               TensorSpec("probabilities", "FP32", (-1, 3))]
    rows = np.random.default_rng(3).uniform(0, 8, size=(20, 4)).astype(np.float32)
    result = runtime.predict({"input": rows}, ["label", "probabilities"])
    np.testing.assert_array_equal(result["label"], onnx_logreg.model.predict(rows))
    np.testing.assert_allclose(result["probabilities"], onnx_logreg.model.predict_proba(rows),
                               rtol=1e-4, atol=1e-5)


def test_only_the_requested_outputs_are_run(onnx_logreg: ModelCase) -> None:
    runtime = onnx_logreg.load()
    recorder = RecordingSession(runtime._run)
    runtime._run = recorder.run  # the session call predict makes
    result = runtime.predict({"input": np.ones((2, 4), dtype=np.float32)}, ["probabilities"])
    assert list(result) == ["probabilities"]
    assert recorder.requested == [["probabilities"]]


def test_session_runner_matches_the_public_run(onnx_logreg: ModelCase) -> None:
    """The CPU-only shortcut past InferenceSession.run's Python checks gives the same arrays;
    any other provider set keeps the public method."""
    runtime = onnx_logreg.load()
    session = runtime.model
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    fast = session_runner(session)
    assert fast != session.run
    for ours, theirs in zip(fast(names, {"input": x}), session.run(names, {"input": x}),
                            strict=True):
        np.testing.assert_array_equal(ours, theirs)

    class GpuSession:
        _sess = object()

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def run(self, names, feeds):  # pragma: no cover - identity is what is checked
            return []

    gpu = GpuSession()
    assert session_runner(gpu) == gpu.run


def test_thread_defaults_are_one_intra_op_thread(onnx_matmul: ModelCase) -> None:
    runtime = onnx_matmul.load()
    assert runtime.session_options is not None
    assert runtime.session_options.intra_op_num_threads == 1
    assert runtime.session_options.inter_op_num_threads == 0  # ONNX Runtime's own choice
    assert runtime.model is not None
    assert runtime.model.get_session_options().intra_op_num_threads == 1


def test_thread_parameters_reach_the_session(onnx_matmul: ModelCase) -> None:
    runtime = onnx_matmul.load(parameters={"intra_op_threads": 2, "inter_op_threads": "3"})
    assert runtime.model is not None
    for options in (runtime.session_options, runtime.model.get_session_options()):
        assert options is not None
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)


@pytest.mark.parametrize("value", ["two", -1, True, 1.5])
def test_bad_thread_parameter_is_a_load_error(onnx_matmul: ModelCase, value: object) -> None:
    with pytest.raises(ModelLoadError, match="intra_op_threads"):
        onnx_matmul.load(parameters={"intra_op_threads": value})


def test_zipmap_output_is_a_clean_load_error(
        sklearn_logreg: ModelCase, skl2onnx_converter: Callable[..., bytes],
        tmp_path: Path) -> None:
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(skl2onnx_converter(sklearn_logreg.model, 4))  # ZipMap left on
    with pytest.raises(ModelLoadError, match="zipmap"):
        load(path)
    # Declaring only the tensor output serves the model without its ZipMap.
    runtime = load(path, outputs=[{"name": "output_label", "datatype": "INT64", "shape": [-1]}])
    rows = np.full((3, 4), 2.0, dtype=np.float32)
    np.testing.assert_array_equal(
        runtime.predict({"input": rows}, ["output_label"])["output_label"],
        sklearn_logreg.model.predict(rows))


def test_declared_inputs_must_match_the_graph(onnx_matmul: ModelCase) -> None:
    with pytest.raises(ModelLoadError, match="do not match"):
        onnx_matmul.load(inputs=[{"name": "features", "datatype": "FP32", "shape": [-1, 3]}])
