"""PyTorch programs: TorchScript (``torch.jit.save``, ``.pt``) and ``torch.export``
(``torch.export.save``, ``.pt2``), run on the CPU under ``torch.inference_mode()``.

An exported program records its inputs' names, dtypes and shapes (dynamic dimensions become
-1), so it needs no declaration. A saved TorchScript module keeps only its argument names;
inputs declared in ``model-settings.yaml`` are taken as they are, else they are learned: one
input per tensor argument of ``forward`` (those before the first with a default value), FP32,
with the sizes the first layer that reads the argument fixes (``linear``: ``[-1, in]``,
``convNd``: ``[-1, channels, -1...]``, ``matmul``/``mm`` by a parameter: ``[-1, rows]``;
``embedding`` indices are INT64 ``[-1, -1]``) and -1 for every other size; when no such layer
reads it, the first rank of 2, 1, 3, 4 a forward pass accepts. Outputs are learned from one
forward pass on zeros: a tensor is ``output-0``, a tuple ``output-0..n``, a dict keeps its keys;
an output size that follows an input size of -1 is -1 too.

A ``.pt2`` program is served by its verified ONNX copy where ONNX Runtime answers alike and is
faster (``runtimes/torch_onnx.py``; ``compile: none`` opts out).

``parameters.intra_op_threads`` (default 1) and ``inter_op_threads`` set torch's thread pools;
they are process-wide, so every torch model in one server shares the last value set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtimes import compiled, torch_onnx
from serving.protocol.datatypes import datatype_of, dtype_for
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import find_artifact
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

torch = LazyModule("torch")

_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
              "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
              "bool": "BOOL", "bfloat16": "FP32"}


class TorchRuntime(compiled.CompilableRuntime):
    name = "torch"
    framework = "PyTorch"
    platform = "pytorch_libtorch"
    artifact_suffixes: ClassVar[tuple[str, ...]] = (".pt2", ".pt")
    execution = "auto"  # CPU-bound and fast for small models: timed at load

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: Any = None
        self._program: Any = None  # the torch.export program, until compilation is decided
        self._output_names: list[str] = []

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        try:
            self.load_compilable(
                path, load_native=lambda: self._load_torch(path),
                cached=torch_onnx.load_cached,
                compile_native=lambda: torch_onnx.compile_verified(
                    self._program, path, inputs=self.inputs, outputs=self.outputs,
                    reference=lambda rows: self._forward({self.inputs[0].name: rows}),
                    cache=not (self.settings.inputs or self.settings.outputs),
                    insist=self.settings.parameters.get("compile") == "onnx"))
        finally:
            self._program = None  # the module (or the ONNX copy) serves; the program is not kept

    def _load_torch(self, path: Path) -> None:
        try:
            torch.set_grad_enabled  # noqa: B018 - import torch now, to report it missing
        except ImportError as exc:
            raise ModelLoadError(f"{path}: torch is not installed ({exc}); install "
                                 "turnout[torch]") from exc
        self._set_threads(path)
        exported = path.name.endswith(".pt2")
        try:
            if exported:
                program = self._program = torch.export.load(str(path))
                inferred = _exported_inputs(program)
                module = program.module()
            else:
                with warnings.catch_warnings():  # deprecated in favour of torch.export, still used
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), map_location="cpu")
                module.eval()
                inferred = []
        except Exception as exc:
            kind = "torch.export program" if exported else "TorchScript module (torch.jit.save)"
            raise ModelLoadError(f"cannot load {path} as a {kind}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        self.model = module
        inputs = [s.to_spec() for s in self.settings.inputs] or inferred
        # A TorchScript file without declared inputs: candidates learned from forward's
        # signature and graph, each checked by a forward pass like declared ones.
        candidates = [inputs] if inputs else _script_inputs(module, path)
        failure: Exception | None = None
        for candidate in candidates:
            for spec in candidate:
                if spec.datatype == "BYTES":
                    raise ModelLoadError(f"{path}: input '{spec.name}' is BYTES; torch takes "
                                         "numeric tensors only")
            self.inputs = candidate
            try:
                inferred_outputs, probe = self._describe_outputs(candidate)
            except Exception as exc:
                failure = failure or exc
                continue
            inputs = candidate
            break
        else:
            assert failure is not None
            shapes = [[list(s.shape) for s in c] for c in candidates]
            if self.settings.inputs or inferred:
                raise ModelLoadError(
                    f"{path}: a forward pass on zeros shaped like the inputs {shapes[0]} fails, "
                    f"so the outputs cannot be described: {type(failure).__name__}: "
                    f"{failure}") from failure
            names = [s.name for s in candidates[0]]
            reason = (str(failure).strip().splitlines() or [""])[-1]  # TorchScript's trace: long
            raise ModelLoadError(
                f"{path}: a TorchScript file does not record its inputs' datatypes and shapes, "
                f"and forward({', '.join(names)}) fails on zeros shaped like "
                f"{' or '.join(map(str, shapes))} (-1: sizes 1, 32, 224): "
                f"{type(failure).__name__}: {reason}; declare them in model-settings.yaml with "
                f"the sizes forward takes, e.g. inputs: [{{name: {names[0]}, datatype: FP32, "
                f"shape: [-1, 4]}}]") from failure
        self._output_names = list(probe)
        self.declared(inputs, inferred_outputs)
        self._check_declared(path, probe)

    def _describe_outputs(self, inputs: list[TensorSpec]
                          ) -> tuple[list[TensorSpec], dict[str, np.ndarray]]:
        """Output specs from a forward pass on zeros, one row; other sizes of -1 are 1, else
        32, else 224 (a convolution needs room for its kernel). Where an input has such a
        size, a second pass with those sizes doubled tells which output sizes follow it: -1."""
        def zeros(size: int) -> dict[str, np.ndarray]:
            return {spec.name: np.zeros(
                tuple((1 if i == 0 else size) if d < 0 else d for i, d in enumerate(spec.shape))
                or (1,), dtype=dtype_for(spec.datatype)) for spec in inputs}

        free = any(d < 0 for spec in inputs for d in spec.shape[1:])
        for size in (1, 32, 224) if free else (1,):
            try:
                probe = self._forward(zeros(size))
                break
            except Exception:
                if size == 224 or not free:
                    raise
        shapes = {name: (-1, *array.shape[1:]) for name, array in probe.items()}
        if free:
            try:
                second = self._forward(zeros(2 * size))
            except Exception:
                second = {}  # the model takes that size only: nothing varies
            for name, array in second.items():
                if name in shapes and array.ndim == len(shapes[name]):
                    shapes[name] = tuple(-1 if a != b else a for a, b in
                                         zip(shapes[name], (-1, *array.shape[1:]), strict=True))
        return [TensorSpec(name, datatype_of(array), shapes[name])
                for name, array in probe.items()], probe

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if self._compiled is not None:
            return self._compiled.predict(inputs[self.inputs[0].name], outputs)
        result = self._forward(inputs)
        return {name: result[name] for name in outputs}

    def unload(self) -> None:
        self.model = None
        self._compiled = None

    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.model is not None, "predict called before load"
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.require(inputs[spec.name], requirements=["C", "W"]))
                       for spec in self.inputs]
            result = self.model(*tensors)
            return self._name_outputs(result)

    def _name_outputs(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            named = {str(k): v for k, v in result.items()}
        else:
            values = list(result) if isinstance(result, tuple | list) else [result]
            named = {f"output-{i}": v for i, v in enumerate(values)}
        return {k: _to_numpy(v) for k, v in named.items()}

    def _check_declared(self, path: Path, probe: dict[str, np.ndarray]) -> None:
        unknown = [spec.name for spec in self.outputs if spec.name not in probe]
        if unknown:
            raise ModelLoadError(f"{path}: declared output(s) {unknown} are not produced; the "
                                 f"model returns {list(probe)}")

    def _set_threads(self, path: Path) -> None:
        params = self.settings.parameters
        intra = params.get("intra_op_threads", 1)
        inter = params.get("inter_op_threads")
        for name, value in (("intra_op_threads", intra), ("inter_op_threads", inter)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ModelLoadError(f"{path}: parameter {name} must be a whole number >= 1, "
                                     f"not {value!r}")
        torch.set_num_threads(intra)
        if inter is not None:
            try:
                torch.set_num_interop_threads(inter)
            except RuntimeError:  # only settable before torch's first parallel work
                pass


def _exported_inputs(program: Any) -> list[TensorSpec]:
    """Names, datatypes and shapes of an exported program's user inputs (symbolic dims: -1)."""
    user_inputs = list(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        if value is None or not hasattr(value, "dtype"):
            raise ModelLoadError(f"input '{node.name}' of the exported program is not a tensor")
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in _DATATYPES:
            raise ModelLoadError(f"input '{node.name}' has dtype {dtype}, which cannot be served")
        shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        specs.append(TensorSpec(node.name, _DATATYPES[dtype], shape))
    return specs


def _script_inputs(module: Any, path: Path) -> list[list[TensorSpec]]:
    """Candidate inputs of a TorchScript module that declares none: the tensor arguments of
    ``forward`` up to the first with a default value, FP32 with the sizes their first layer
    fixes; arguments no known layer reads get -1 sizes, tried at ranks 2, 1, 3 and 4."""
    try:
        arguments = list(module.forward.schema.arguments)[1:]  # the first is self
    except Exception as exc:
        raise ModelLoadError(f"{path}: the TorchScript module has no readable forward "
                             f"signature ({type(exc).__name__}: {exc}); declare its inputs in "
                             "model-settings.yaml") from exc
    names = []
    for argument in arguments:
        if argument.has_default_value():
            break  # left to its default, like every argument after it
        if not isinstance(argument.type, torch.TensorType):
            raise ModelLoadError(f"{path}: forward's argument '{argument.name}' is "
                                 f"{argument.type}, not a tensor; only tensors can be inputs "
                                 "(give it a default value or wrap the module)")
        names.append(argument.name)
    if not names:
        raise ModelLoadError(f"{path}: forward takes no tensor argument to serve as an input")
    try:
        known = _first_layer_specs(module, names)
    except Exception:  # TorchScript's graph API is torch's own; without it, sizes are unknown
        known = {}
    return [[known.get(name) or TensorSpec(name, "FP32", (-1,) * rank) for name in names]
            for rank in ((2, 1, 3, 4) if len(known) < len(names) else (2,))]


# Ops that keep their first operand's shape: an input read through them first is read by
# whatever reads their result.
_SAME_SHAPE = frozenset(f"aten::{op}" for op in (
    "relu", "relu_", "sigmoid", "tanh", "gelu", "silu", "elu", "leaky_relu", "dropout",
    "contiguous", "clone", "detach", "abs", "neg", "exp", "log", "float", "to"))
_CONV = {"aten::conv1d": 1, "aten::conv2d": 2, "aten::conv3d": 3}


def _first_layer_specs(module: Any, names: list[str]) -> dict[str, TensorSpec]:
    """Specs of the leading ``forward`` arguments ``names`` whose first reader is a layer that
    fixes their sizes, found in the inlined TorchScript graph."""
    graph = module.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    values = list(graph.inputs())
    this, arguments = values[0], values[1:len(names) + 1]

    def parameter(value: Any) -> Any:
        """The tensor a graph value holds when it is a module attribute or a constant."""
        node, names = value.node(), []
        if node.kind() == "prim::Constant":
            held = value.toIValue()
            return held if isinstance(held, torch.Tensor) else None
        while node.kind() == "prim::GetAttr":
            names.append(node.s("name"))
            value = next(iter(node.inputs()))
            node = value.node()
        if not names or value.unique() != this.unique():
            return None
        held = module
        for name in reversed(names):
            held = getattr(held, name)
        return held if isinstance(held, torch.Tensor) else None

    def constant(value: Any) -> Any:
        return value.toIValue() if value.node().kind() == "prim::Constant" else None

    def reader_spec(name: str, value: Any) -> TensorSpec | None:
        pending, seen = [value], 0
        while pending and seen < 64:
            current = pending.pop(0)
            for use in current.uses():
                seen += 1
                node, operands = use.user, list(use.user.inputs())
                kind = node.kind()
                if kind in _SAME_SHAPE and use.offset == 0:
                    pending.extend(node.outputs())
                    continue
                other = parameter(operands[1]) if len(operands) > 1 else None
                if kind == "aten::linear" and use.offset == 0 and other is not None \
                        and other.dim() == 2:
                    return TensorSpec(name, "FP32", (-1, int(other.shape[1])))
                if kind in ("aten::matmul", "aten::mm") and use.offset == 0 \
                        and other is not None and other.dim() == 2:
                    return TensorSpec(name, "FP32", (-1, int(other.shape[0])))
                if kind in _CONV and use.offset == 0 and other is not None:
                    groups = constant(operands[6]) if len(operands) > 6 else 1
                    channels = int(other.shape[1]) * (groups if isinstance(groups, int) else 1)
                    return TensorSpec(name, "FP32", (-1, channels, *(-1,) * _CONV[kind]))
                if kind == "aten::embedding" and use.offset == 1:
                    return TensorSpec(name, "INT64", (-1, -1))
        return None

    specs = {}
    for name, value in zip(names, arguments, strict=True):
        spec = reader_spec(name, value)
        if spec is not None:
            specs[name] = spec
    return specs


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(value)
