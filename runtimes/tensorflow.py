"""TensorFlow SavedModels (``tf.saved_model.save`` or Keras ``model.export``), run through one
of their serving signatures.

The version folder is the SavedModel folder (``saved_model.pb`` and ``variables/``). The
signature is ``parameters.signature_name`` (default ``serving_default``); its input and output
names, dtypes and shapes are the model's metadata, unknown dimensions as -1. String tensors are
BYTES. ``parameters.intra_op_threads`` / ``inter_op_threads`` set TensorFlow's thread pools
(process-wide, and only before TensorFlow first runs anything).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime, find_artifact
from serving.runtime.lazy import LazyModule
from serving.runtime.settings import ModelSettings

tf = LazyModule("tensorflow")

DEFAULT_SIGNATURE = "serving_default"
_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int8": "INT8",
              "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
              "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64", "bool": "BOOL",
              "string": "BYTES"}


class TensorFlowRuntime(Runtime):
    name = "tensorflow"
    platform = "tensorflow_savedmodel"
    artifact_suffixes: ClassVar[tuple[str, ...]] = ("saved_model.pb",)
    execution = "auto"  # timed at load like the others; most graphs land in the thread pool

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: Any = None
        self.signature: Any = None
        self.signature_name = DEFAULT_SIGNATURE

    def load(self) -> None:
        path = find_artifact(self.settings.artifact, self.artifact_suffixes)
        folder = path.parent
        self.signature_name = str(self.settings.parameters.get("signature_name",
                                                               DEFAULT_SIGNATURE))
        try:
            tf.constant  # noqa: B018 - import TensorFlow now, to report it missing
        except ImportError as exc:
            raise ModelLoadError(f"{path}: tensorflow is not installed ({exc}); install "
                                 "turnout[tensorflow]") from exc
        self._set_threads()
        try:
            loaded = tf.saved_model.load(str(folder))
        except Exception as exc:
            raise ModelLoadError(f"cannot load TensorFlow SavedModel {path}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        signatures = dict(loaded.signatures)
        if self.signature_name not in signatures:
            raise ModelLoadError(f"{path}: no signature {self.signature_name!r}; the SavedModel "
                                 f"has {sorted(signatures) or 'none'} (parameters.signature_name)")
        signature = signatures[self.signature_name]
        args, kwargs = signature.structured_input_signature
        if args:
            raise ModelLoadError(f"{path}: signature {self.signature_name!r} takes positional "
                                 "inputs; serving signatures take named ones")
        inputs = [_spec(name, spec, path) for name, spec in sorted(kwargs.items())]
        outputs = [_spec(name, spec, path)
                   for name, spec in sorted(signature.structured_outputs.items())]
        self.model, self.signature = loaded, signature
        self.declared(inputs, outputs)
        self._check_declared(path, [s.name for s in inputs], [s.name for s in outputs])

    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        assert self.signature is not None, "predict called before load"
        result = self.signature(**{name: tf.constant(array) for name, array in inputs.items()})
        return {name: result[name].numpy() for name in outputs}

    def unload(self) -> None:
        self.model = self.signature = None

    def _check_declared(self, path: Path, inputs: list[str], outputs: list[str]) -> None:
        declared = [spec.name for spec in self.inputs]
        if sorted(declared) != sorted(inputs):
            raise ModelLoadError(f"{path}: declared inputs {declared} do not match signature "
                                 f"{self.signature_name!r}'s inputs {inputs}")
        unknown = [spec.name for spec in self.outputs if spec.name not in outputs]
        if unknown:
            raise ModelLoadError(f"{path}: declared output(s) {unknown} are not in signature "
                                 f"{self.signature_name!r}; its outputs are {outputs}")

    def _set_threads(self) -> None:
        params = self.settings.parameters
        threading = tf.config.threading
        for name, setter in (("intra_op_threads", threading.set_intra_op_parallelism_threads),
                             ("inter_op_threads", threading.set_inter_op_parallelism_threads)):
            value = params.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ModelLoadError(f"parameter {name} must be a whole number >= 0, not "
                                     f"{value!r}")
            try:
                setter(value)
            except RuntimeError:  # TensorFlow already initialised its pools
                pass


def _spec(name: str, spec: Any, path: Path) -> TensorSpec:
    dtype = spec.dtype.name
    if dtype not in _DATATYPES:
        raise ModelLoadError(f"{path}: tensor '{name}' has dtype {dtype}, which cannot be served")
    shape = spec.shape
    dims = () if shape.rank is None else tuple(-1 if d is None else int(d) for d in shape)
    return TensorSpec(name, _DATATYPES[dtype], dims)
