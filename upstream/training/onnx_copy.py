"""The ONNX copy beside a native artifact, in ``onnx/``, servable alone by the onnx runtime.

The conversion itself is the model server's verified compilation (``runtimes/compiled.py`` and
the framework's ``*_onnx.py``), called with a throw-away cache root to get the verified bytes.
The graph's input and outputs are then given the native model's names and shapes (skl2onnx
calls them ``X``/``label``/``probabilities`` and returns regression values as ``[N, 1]``), so one
request body works against either folder. The result is checked once more as served: loaded by
the onnx runtime and held to the native runtime's answers on probe rows and held-out rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from runtimes import compiled
from runtimes.compiled import CompiledModel, Tolerance
from serving.protocol.datatypes import dtype_for
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime
from upstream.training.base import ONNX_DIR, load_runtime, served_predict, signature, write_settings

MODEL_FILE = "model.onnx"
IDENTITY_OPSET = 13  # Identity and Reshape as they are today; ONNX Runtime reads it
Compile = Callable[[Path], tuple[CompiledModel | None, str]]


def compile_bytes(artifact: Path, dists: Sequence[str], compile_verified: Compile
                  ) -> tuple[bytes | None, dict[str, list[int | None]], str]:
    """Run a runtime's compile-and-verify into a temporary cache; the verified graph, which
    session output serves each method, or why there is none."""
    with tempfile.TemporaryDirectory(prefix="turnout-onnx-") as tmp:
        root = Path(tmp)
        model, reason = compile_verified(root)
        if model is None:
            return None, {}, reason
        folder = root / compiled.cache_key(artifact, dists)
        meta = json.loads((folder / "meta.json").read_text())
        return (folder / MODEL_FILE).read_bytes(), meta["methods"], ""


def align(onnx_bytes: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
          methods: dict[str, list[int | None]]) -> tuple[bytes | None, str]:
    """The graph with the native input name and one output per native output, same name and
    rank (Identity or Reshape nodes appended); or None and why not."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", IDENTITY_OPSET))  # onnxmltools: ML only
    if len(graph.input) != 1 or len(inputs) != 1:
        return None, "only single-input graphs are aligned"
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {i.name for i in graph.initializer}
    wanted = [inputs[0].name, *(spec.name for spec in outputs)]
    graph_input = graph.input[0]
    old_outputs = {i: out for i, out in enumerate(graph.output)}
    clashes = [n for n in wanted if n in taken and n != graph_input.name
               and n not in {o.name for o in old_outputs.values()}]
    if clashes:
        return None, f"the graph already uses the names {clashes}"

    if graph_input.name != inputs[0].name:
        old_name = graph_input.name
        graph_input.name = inputs[0].name
        graph.node.insert(0, helper.make_node("Identity", [inputs[0].name], [old_name]))
    new_outputs = []
    for spec in outputs:
        index, column = methods[spec.name]
        if column is not None or index is None or index not in old_outputs:
            return None, f"output {spec.name} is not one whole graph output; not aligned"
        source = old_outputs[index]
        elem_type = source.type.tensor_type.elem_type
        rank = len(source.type.tensor_type.shape.dim)
        trailing = list(spec.shape[1:])
        if source.name == spec.name and rank == len(spec.shape):
            kept = onnx.ValueInfoProto()
            kept.CopyFrom(source)  # a copy: the graph's outputs are cleared below
            new_outputs.append(kept)
            continue
        if rank == len(spec.shape):
            graph.node.append(helper.make_node("Identity", [source.name], [spec.name]))
        elif all(d > 0 for d in trailing):
            shape_name = f"{spec.name}_shape"
            graph.initializer.append(numpy_helper.from_array(
                np.array([-1, *trailing], dtype=np.int64), shape_name))
            graph.node.append(helper.make_node("Reshape", [source.name, shape_name], [spec.name]))
        else:
            return None, f"output {spec.name} has an unknown size to reshape to"
        new_outputs.append(helper.make_tensor_value_info(spec.name, elem_type,
                                                         ["N", *trailing]))
    del graph.output[:]
    graph.output.extend(new_outputs)
    onnx.checker.check_model(model)
    return model.SerializeToString(), ""


def write_copy(folder: Path, onnx_bytes: bytes, *, name: str, native: Runtime,
               rows: np.ndarray, tolerance: Tolerance) -> tuple[str | None, str]:
    """Save the copy in ``folder/onnx`` if the onnx runtime serving it answers like ``native``
    on ``rows``; its relative path, or None and why not (the folder is then removed)."""
    target = folder / ONNX_DIR
    target.mkdir()
    (target / MODEL_FILE).write_bytes(onnx_bytes)
    try:
        served = load_runtime("onnx", target)
        if [s.name for s in served.inputs] != [s.name for s in native.inputs]:
            raise ValueError(f"the copy takes {[s.name for s in served.inputs]}")
        spec = native.inputs[0]
        probe = np.ascontiguousarray(rows, dtype=dtype_for(spec.datatype))
        # Like runtimes/sklearn_onnx.py: atol grows with the values (regressions reach 1e3).
        scale = max(float(np.abs(v).max(initial=0.0)) for v in served_predict(native, probe).values())
        tolerance = Tolerance(tolerance.rtol, max(tolerance.atol, tolerance.rtol * scale))
        mismatch = compiled.mismatch_of(
            _Served(served), lambda x: served_predict(native, x), probe, tolerance)  # type: ignore[arg-type]
    except Exception as exc:  # a graph ONNX Runtime refuses, or names that do not line up
        mismatch = f"{type(exc).__name__}: {exc}"
    if mismatch:
        shutil.rmtree(target)
        return None, f"the ONNX copy does not answer like the model when served: {mismatch}"
    inputs, outputs = signature(served)
    write_settings(target, name=f"{name}-onnx", runtime="onnx", inputs=inputs, outputs=outputs)
    return f"{ONNX_DIR}/{MODEL_FILE}", ""


def check_rows(native: Runtime, extra: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """Probe rows across ``scales`` (see runtimes/compiled.py) plus real rows ``extra``."""
    spec = native.inputs[0]
    probe = compiled.probe_rows(int(spec.shape[1]), dtype_for(spec.datatype).type, scales,
                                rows_per_scale=64)
    return np.concatenate([probe, np.asarray(extra, dtype=probe.dtype)])


class _Served:
    """The onnx runtime seen as :class:`CompiledModel` is by ``compiled.mismatch_of``."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def predict(self, rows: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        return self.runtime.predict({self.runtime.inputs[0].name: rows}, outputs)
