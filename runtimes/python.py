"""Custom Python models: subclass :class:`Model`, point a model folder at it, get a server.

::

    from runtimes.python import Model

    class Sentiment(Model):
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1], "content_type": "str"}]
        outputs = [{"name": "score", "datatype": "FP64", "shape": [-1]}]

        def load(self):                      # once, before the model reports READY
            self.words = {"good": 1.0, "bad": -1.0}

        def predict(self, inputs):           # a dict of decoded inputs -> outputs
            return {"score": [sum(self.words.get(w, 0.0) for w in t.split())
                              for t in inputs["text"]]}

``model-settings.yaml`` beside it says ``model_class: model:Sentiment`` (``runtime: python`` is
implied), or ``turnout serve --model-class model:Sentiment`` names it on the command line.
The module is imported from the model's folder first, then from ``sys.path``.

Every protocol, adaptive batching, metrics and the inline/thread choice come from the server;
the class only turns inputs into outputs. ``load``, ``preprocess``, ``predict`` and
``postprocess`` may each be ``async def``: such a model gets its own event loop thread, so
clients it opens in ``load`` live as long as the model.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serving.protocol.datatypes import datatype_of, dtype_for
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.base import Runtime
from serving.runtime.content_types import encode_tensor, from_frame, to_frame
from serving.runtime.settings import ModelSettings, TensorSpecSettings

__all__ = ["Model", "PythonRuntime"]

_HOOKS = ("load", "preprocess", "predict", "postprocess")


class Model:
    """Base class of a user's model. Override :meth:`predict`; the rest is optional.

    ``inputs`` and ``outputs`` declare the model's tensors as dicts (``name``, ``datatype``,
    ``shape``, optional ``content_type``) unless ``model-settings.yaml`` declares them; outputs
    left undeclared are learned from one prediction on a row of zeros at load time.
    Set ``content_type = "pd"`` to receive the inputs as one ``pandas.DataFrame``.
    """

    inputs: ClassVar[list[dict[str, Any]]] = []
    outputs: ClassVar[list[dict[str, Any]]] = []
    content_type: ClassVar[str | None] = None

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.version = settings.version
        self.parameters: dict[str, Any] = dict(settings.parameters)
        folder = Path(settings.artifact)
        self.folder = folder if folder.is_dir() else folder.parent

    def load(self) -> Any:
        """Read weights, open clients: anything done once. May be ``async``."""

    def preprocess(self, inputs: Any) -> Any:
        """Turn decoded inputs (a dict of arrays, or a DataFrame) into what predict takes."""
        return inputs

    def predict(self, data: Any) -> Any:
        """Compute outputs: a dict name -> array-like, one array-like, a tuple, or a DataFrame."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def postprocess(self, result: Any) -> Any:
        """Shape predict's result into outputs; the default passes it through."""
        return result

    def unload(self) -> Any:
        """Close what load opened. May be ``async``."""


class PythonRuntime(Runtime):
    """Runs a :class:`Model` subclass named by ``model_class`` in the model settings."""

    name = "python"
    platform = "python"
    artifact_suffixes: ClassVar[tuple[str, ...]] = ()
    execution = "thread"  # user code may block; declare execution: auto/inline to change

    def __init__(self, settings: ModelSettings) -> None:
        super().__init__(settings)
        self.model: Model | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()
        self._frame = False
        self._output_types: dict[str, str | None] = {}

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        if not self.settings.model_class:
            raise ModelLoadError("runtime python needs model_class: module:Class in "
                                 "model-settings.yaml (or turnout serve --model-class)")
        cls = load_model_class(self.settings.model_class, Path(self.settings.artifact))
        if any(inspect.iscoroutinefunction(getattr(cls, hook)) for hook in _HOOKS) \
                and self.settings.execution is None:
            self.execution = "thread"
        try:
            model = cls(self.settings)
            self.model = model
            self._call(model.load)
        except ModelLoadError:
            self._stop_loop()
            raise
        except Exception as exc:
            self.model = None
            self._stop_loop()
            raise ModelLoadError(f"{self.settings.model_class}.load failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        self._frame = (self.settings.content_type() or model.content_type) == "pd"
        inputs = self._specs(self.settings.inputs, model.inputs, "inputs")
        if not inputs:
            raise ModelLoadError(f"{self.settings.model_class} declares no inputs; list them "
                                 "in model-settings.yaml or as the class attribute 'inputs'")
        declared_outputs = self._specs(self.settings.outputs, model.outputs, "outputs")
        self.inputs = [s.to_spec() for s in inputs]
        # what serving/validation.py decodes before predict (str, base64 per input)
        self.declared_content_types = ({s.name: s.content_type for s in inputs if s.content_type},
                                       self.settings.content_type())
        self._output_types = {s.name: s.content_type for s in declared_outputs}
        self.encodes_outputs = True
        self.outputs = [s.to_spec() for s in declared_outputs]
        if declared_outputs:
            # Check the declaration against one prediction where the model can make one.
            try:
                produced = {spec.name for spec in self._probe_outputs()}
            except ModelLoadError:
                produced = None
            missing = [s.name for s in declared_outputs if produced is not None
                       and s.name not in produced]
            if missing:
                raise ModelLoadError(f"{self.settings.model_class}: declared output(s) "
                                     f"{missing} are not produced; predict returns "
                                     f"{sorted(produced or ())}")
        else:
            self.outputs = self._probe_outputs()
        self.default_outputs = [spec.name for spec in self.outputs]

    def _specs(self, from_settings: list[TensorSpecSettings], from_class: list[Any],
               what: str) -> list[TensorSpecSettings]:
        if from_settings:
            return list(from_settings)
        try:
            return [item if isinstance(item, TensorSpecSettings) else TensorSpecSettings(
                **(item if isinstance(item, dict) else vars(item))) for item in from_class]
        except Exception as exc:
            raise ModelLoadError(f"{self.settings.model_class}.{what} is not a list of "
                                 f"{{name, datatype, shape}}: {exc}") from exc

    def _probe_outputs(self) -> list[TensorSpec]:
        """Learn output names and datatypes from one prediction on a row of zeros."""
        row = {}
        for spec in self.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape) or (1,)
            row[spec.name] = (np.full(shape, "", dtype=object) if spec.datatype == "BYTES"
                              else np.zeros(shape, dtype=dtype_for(spec.datatype)))
        try:
            result = self._run(row)
            specs = [TensorSpec(name, datatype_of(array), (-1, *array.shape[1:]))
                     for name, array in result.items()]
        except Exception as exc:
            raise ModelLoadError(f"{self.settings.model_class}: outputs are not declared and a "
                                 f"prediction on a row of zeros failed ({type(exc).__name__}: "
                                 f"{exc}); declare outputs in model-settings.yaml or on the "
                                 "class") from exc
        return specs

    # -- predicting ------------------------------------------------------------------------
    def predict(self, inputs: dict[str, np.ndarray],
                outputs: Sequence[str]) -> dict[str, np.ndarray]:
        result = self._run(inputs)
        return {name: result[name] for name in outputs if name in result}

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.model
        assert model is not None, "predict called before load"
        data: Any = to_frame(inputs, [s.name for s in self.inputs]) if self._frame else inputs
        data = self._call(model.preprocess, data)
        result = self._call(model.predict, data)
        result = self._call(model.postprocess, result)
        return self._as_outputs(result)

    def _as_outputs(self, result: Any) -> dict[str, np.ndarray]:
        if hasattr(result, "columns") and hasattr(result, "to_numpy"):  # a DataFrame
            named = from_frame(result)
        elif isinstance(result, dict):
            named = dict(result)
        else:
            values = list(result) if isinstance(result, tuple) else [result]
            names = [spec.name for spec in self.outputs] or [f"output-{i}" for i in
                                                            range(len(values))]
            if len(names) != len(values):
                raise ValueError(f"predict returned {len(values)} values for outputs {names}")
            named = dict(zip(names, values, strict=True))
        return {str(name): encode_tensor(str(name), value, self._output_types.get(str(name)))
                for name, value in named.items()}

    def unload(self) -> None:
        model, self.model = self.model, None
        if model is not None:
            try:
                self._call(model.unload)
            finally:
                self._stop_loop()

    # -- sync or async hooks ---------------------------------------------------------------
    def _call(self, hook: Any, *args: Any) -> Any:
        result = hook(*args)
        if inspect.isawaitable(result):
            return asyncio.run_coroutine_threadsafe(_await(result), self._event_loop()).result()
        return result

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The model's own loop, in a daemon thread, started on the first async hook."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True,
                                          name=f"model-{self.settings.name}-loop")
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _stop_loop(self) -> None:
        with self._loop_lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def load_model_class(spec: str, artifact: Path) -> type[Model]:
    """Import ``module:Class``: from the model's folder first, then from ``sys.path``."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ModelLoadError(f"model_class {spec!r} must be module:Class")
    folder = artifact if artifact.is_dir() else artifact.parent
    try:
        module = _import(module_name, folder)
        cls = getattr(module, class_name)
    except ModelLoadError:
        raise
    except AttributeError:
        raise ModelLoadError(f"model_class {spec!r}: module {module_name} has no "
                             f"{class_name}") from None
    except Exception as exc:  # the user's module may raise anything at import
        raise ModelLoadError(f"cannot import model_class {spec!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        hint = (" (a Runtime subclass: name it with runtime: module:Class instead)"
                if isinstance(cls, type) and issubclass(cls, Runtime) else "")
        raise ModelLoadError(f"model_class {spec!r} is not a subclass of "
                             f"runtimes.python.Model{hint}")
    return cls


def _import(module_name: str, folder: Path) -> Any:
    """A module file in the model folder (or the model folder above a version folder) is
    imported under a name unique to its path, so two models may each have a ``model.py``."""
    relative = Path(*module_name.split("."))
    for base in (folder, folder.parent if folder.name.isdigit() else None):
        if base is None:
            continue
        candidates = [base / relative.with_suffix(".py"), base / relative / "__init__.py"]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            continue
        if str(base) not in sys.path:
            sys.path.append(str(base))  # so the module can import its siblings
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        unique = f"_turnout_model_{digest}_{module_name.replace('.', '_')}"
        if unique in sys.modules:
            return sys.modules[unique]
        spec = importlib.util.spec_from_file_location(unique, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(unique, None)
            raise
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ModelLoadError(f"cannot import model_class module {module_name!r}: not in "
                                 f"{folder} nor on sys.path") from exc
        raise
