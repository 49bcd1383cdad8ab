"""ONNX models run by ONNX Runtime on the CPU.

Metadata comes straight from the graph, so ONNX models need no declared inputs or outputs.
Threading is set per session and defaults to one intra-op thread: the server already runs
requests in parallel from its pool, and one session per core each grabbing every core would
oversubscribe the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.protocol.errors import InvalidInput, ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime, find_artifact
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

ort = LazyModule("onnxruntime")

# ONNX Runtime's names for ONNX tensor element types, and their protocol datatypes.
ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
THREAD_PARAMETERS = {"intra_op_threads": "intra_op_num_threads",
                     "inter_op_threads": "inter_op_num_threads"}
DEFAULT_INTRA_OP_THREADS = 1


def session_runner(session: Any) -> Callable[[list[str], Mapping[str, np.ndarray]], list[Any]]:
    """``session.run`` without its per-call Python checks, where that is safe.

    ``InferenceSession.run`` checks the feed's names (the data plane has already matched them
    to the graph's inputs) and retries on another execution provider when one fails (there is
    only the CPU provider here), then calls the compiled session; about a microsecond a call,
    a seventh of a small model's predict. Any other provider set keeps the public method.
    """
    inner = getattr(session, "_sess", None)
    if inner is None or session.get_providers() != ["CPUExecutionProvider"]:
        return session.run  # type: ignore[no-any-return]

    def run(names: list[str], feeds: Mapping[str, np.ndarray]) -> list[Any]:
        return inner.run(names, feeds, None)  # type: ignore[no-any-return]

    return run


class OnnxRuntime(Runtime):
    name = "onnx"
    platform = "onnxruntime_onnx"
    artifact_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)
    execution = "auto"  # CPU-bound and fast for small models: timed at load

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: ort.InferenceSession | None = None
        self.session_options: ort.SessionOptions | None = None
        self._string_inputs: frozenset[str] = frozenset()

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        self.session_options = self._build_options(path)
        try:
            session = ort.InferenceSession(str(path), sess_options=self.session_options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"cannot load ONNX model {path}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        graph_inputs = {arg.name: arg for arg in session.get_inputs()}
        graph_outputs = {arg.name: arg for arg in session.get_outputs()}
        for arg in graph_inputs.values():
            if arg.type not in ONNX_TO_DATATYPE:
                raise ModelLoadError(f"{path}: input '{arg.name}' is a {arg.type}, not a "
                                     "tensor; only tensor inputs can be served")
        self.declared([_spec(arg) for arg in graph_inputs.values()],
                      [_spec(arg) for arg in graph_outputs.values()
                       if arg.type in ONNX_TO_DATATYPE])
        self._check_declared(path, list(graph_inputs), graph_outputs)
        self._string_inputs = frozenset(name for name, arg in graph_inputs.items()
                                        if arg.type == "tensor(string)")
        self.model = session
        self._run = session_runner(session)

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        assert self.model is not None, "predict called before load"
        feeds = {name: _decode(name, array) if name in self._string_inputs else array
                 for name, array in inputs.items()} if self._string_inputs else inputs
        names = outputs if type(outputs) is list else list(outputs)
        results = self._run(names, feeds)  # one array per name, in order
        return {names[0]: results[0]} if len(names) == 1 else dict(zip(names, results, strict=True))

    def unload(self) -> None:
        self.model = None

    def _check_declared(self, path: Path, graph_inputs: list[str],
                        graph_outputs: dict[str, Any]) -> None:
        """Reject overrides the graph cannot honour, and graph outputs that are not tensors."""
        declared_inputs = [spec.name for spec in self.inputs]
        if sorted(declared_inputs) != sorted(graph_inputs):
            raise ModelLoadError(f"{path}: declared inputs {declared_inputs} do not match the "
                                 f"graph's inputs {graph_inputs}")
        # Without overrides every graph output is served, so each must be a tensor; with them,
        # only the declared ones.
        served = ([spec.name for spec in self.outputs] if self.settings.outputs
                  else list(graph_outputs))
        for name in served:
            if name not in graph_outputs:
                raise ModelLoadError(f"{path}: declared output '{name}' is not in the graph; "
                                     f"its outputs are {list(graph_outputs)}")
            if graph_outputs[name].type not in ONNX_TO_DATATYPE:
                raise ModelLoadError(
                    f"{path}: output '{name}' is a {graph_outputs[name].type}, not a tensor, "
                    "and cannot be served; export without it (skl2onnx: "
                    "options={'zipmap': False}) or declare only tensor outputs in model-settings")

    def _build_options(self, path: Path) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = DEFAULT_INTRA_OP_THREADS
        for parameter, attribute in THREAD_PARAMETERS.items():
            value = self.settings.parameters.get(parameter)
            if value is None:
                continue
            count = _thread_count(value)
            if count is None:
                raise ModelLoadError(f"{path}: parameter {parameter} must be a whole number "
                                     f">= 0 (0 lets ONNX Runtime choose), not {value!r}")
            setattr(options, attribute, count)
        return options


def _spec(arg: Any) -> TensorSpec:
    """Symbolic or unknown dimensions become -1; an unknown rank leaves the shape unchecked."""
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape or ())
    return TensorSpec(arg.name, ONNX_TO_DATATYPE[arg.type], shape)


def _thread_count(value: Any) -> int | None:
    """A non-negative int, also from a string such as an environment variable gives."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


_DECODE = np.frompyfunc(lambda item: item.decode() if isinstance(item, bytes) else item, 1, 1)


def _decode(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX Runtime takes string tensors as ``str``; given ``bytes`` it would feed their repr."""
    try:
        return np.asarray(_DECODE(array), dtype=object)
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}' is not valid UTF-8, which ONNX string tensors "
                           "require") from None
