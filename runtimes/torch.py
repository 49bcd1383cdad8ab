"""PyTorch programs: TorchScript (``torch.jit.save``, ``.pt``) and ``torch.export``
(``torch.export.save``, ``.pt2``), run on the CPU under ``torch.inference_mode()``.

An exported program records its inputs' names, dtypes and shapes (dynamic dimensions become
-1), so it needs no declaration. A saved TorchScript module keeps only its argument names, so
its inputs' datatypes and shapes must be declared in ``model-settings.yaml``. Outputs are
learned from one forward pass on zeros: a tensor is ``output-0``, a tuple ``output-0..n``, a
dict keeps its keys.

``parameters.intra_op_threads`` (default 1) and ``inter_op_threads`` set torch's thread pools;
they are process-wide, so every torch model in one server shares the last value set.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.protocol.datatypes import datatype_of, dtype_for
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime, find_artifact
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

torch = LazyModule("torch")

_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
              "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
              "bool": "BOOL", "bfloat16": "FP32"}


class TorchRuntime(Runtime):
    name = "torch"
    platform = "pytorch_libtorch"
    artifact_suffixes: ClassVar[tuple[str, ...]] = (".pt2", ".pt")
    execution = "auto"  # CPU-bound and fast for small models: timed at load

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: Any = None
        self._output_names: list[str] = []

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        try:
            torch.set_grad_enabled  # noqa: B018 - import torch now, to report it missing
        except ImportError as exc:
            raise ModelLoadError(f"{path}: torch is not installed ({exc}); install "
                                 "turnout[torch]") from exc
        self._set_threads(path)
        exported = path.name.endswith(".pt2")
        try:
            if exported:
                program = torch.export.load(str(path))
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
        if not inputs:
            names = _script_argument_names(module)
            raise ModelLoadError(
                f"{path}: a TorchScript file does not record its inputs' datatypes and shapes; "
                f"declare them in model-settings.yaml, e.g. inputs: [{{name: "
                f"{names[0] if names else 'x'}, datatype: FP32, shape: [-1, 4]}}]")
        for spec in inputs:
            if spec.datatype == "BYTES":
                raise ModelLoadError(f"{path}: input '{spec.name}' is BYTES; torch takes "
                                     "numeric tensors only")
        self.inputs = inputs
        try:
            probe = self._forward({spec.name: np.zeros(
                tuple(1 if d < 0 else d for d in spec.shape) or (1,),
                dtype=dtype_for(spec.datatype)) for spec in inputs})
        except Exception as exc:
            raise ModelLoadError(f"{path}: a forward pass on zeros shaped like the inputs "
                                 f"{[list(s.shape) for s in inputs]} fails, so the outputs cannot "
                                 f"be described: {type(exc).__name__}: {exc}") from exc
        self._output_names = list(probe)
        inferred_outputs = [TensorSpec(name, datatype_of(array), (-1, *array.shape[1:]))
                            for name, array in probe.items()]
        self.declared(inputs, inferred_outputs)
        self._check_declared(path, probe)

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        result = self._forward(inputs)
        return {name: result[name] for name in outputs}

    def unload(self) -> None:
        self.model = None

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


def _script_argument_names(module: Any) -> list[str]:
    try:
        return [a.name for a in module.forward.schema.arguments][1:]
    except Exception:
        return []


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        tensor = value.detach()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return np.asarray(value)
