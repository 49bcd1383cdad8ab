"""MLflow model folders: which runtime serves them, and which file or folder it loads.

An MLflow model (a registered version's artifacts, ``mlflow.<flavor>.save_model``) is a folder
with an ``MLmodel`` YAML file naming its flavors. This module reads that file — bounded in size,
``yaml.safe_load``, never MLflow itself — and picks the framework-native flavor Turnout serves:

=============  ============================================  ================================
flavor         artifact (MLflow 3.x names)                    runtime
=============  ============================================  ================================
onnx           ``data: model.onnx``                           onnx
xgboost        ``data: model.ubj`` / ``.json`` / ``.xgb``     xgboost
lightgbm       ``data: model.lgb`` (a Booster, as text)       lightgbm
               ``data: model.pkl`` (a pickled wrapper)        sklearn (pickle rules apply)
sklearn        ``pickled_model: model.skops`` (the default)   sklearn (skops, checked types)
               ``pickled_model: model.pkl`` (cloud)pickle     sklearn (pickle rules apply)
pytorch        ``model_data: data`` → ``data/model.pt2``      torch (a torch.export program)
               ``data/model.pth`` holding TorchScript         torch
tensorflow     ``saved_model_dir: tf2model`` (tf2-module)     tensorflow (the SavedModel)
tensorflow /   ``data/model/`` (a SavedModel: Keras export    tensorflow
keras          or a TF < 2.16 Keras save)
=============  ============================================  ================================

Refused, with the reason: ``python_function`` alone (it runs the model's own Python through
MLflow), a pytorch flavor holding a pickled ``nn.Module`` (``torch.save``), Keras ``.keras`` /
``.h5`` files, a LightGBM scikit-learn wrapper saved with skops (its LightGBM types are not
trusted; log ``model.booster_``), and every flavor not in the table.

The ``signature`` is read into tensor specs where it maps cleanly (:func:`signature_specs`), but
it is not applied to the model's settings: runtimes learn their inputs from the artifact, and
declared specs would change what they accept (names, datatypes, one input per column).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec

MLMODEL_FILE = "MLmodel"
MAX_MLMODEL_BYTES = 1 << 20  # MLflow writes a few KiB; wide signatures stay far below this
# Native flavors in the order they are preferred when one MLmodel names several: formats that
# run no code when loaded first.
SERVED_FLAVORS = ("onnx", "xgboost", "lightgbm", "sklearn", "pytorch", "tensorflow", "keras")

_SKLEARN_SUFFIXES = (".skops", ".pkl", ".pickle", ".joblib")  # what the pickle rules can see
_TENSOR_DATATYPES = {"float16": "FP16", "float32": "FP32", "float64": "FP64", "int8": "INT8",
                     "int16": "INT16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8",
                     "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                     "bool": "BOOL", "str": "BYTES", "bytes": "BYTES", "object": "BYTES"}
_COLUMN_DATATYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32",
                     "double": "FP64", "string": "BYTES", "binary": "BYTES"}


@dataclass(frozen=True)
class MLflowModel:
    """What an ``MLmodel`` file says Turnout should load."""

    flavor: str
    runtime: str
    artifact: Path  # a file, or a folder the runtime looks into (a SavedModel)
    flavors: tuple[str, ...]
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)


class _Refused(Exception):
    """One flavor's layout that Turnout does not serve; the message says why."""


def is_mlflow_model(folder: Path) -> bool:
    return folder.is_dir() and (folder / MLMODEL_FILE).is_file()


def read_mlmodel(path: Path) -> dict[str, Any]:
    """The parsed ``MLmodel`` file; anything unreadable is a ModelLoadError naming the problem."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MLMODEL_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MLMODEL_BYTES:
        raise ModelLoadError(f"{path} is larger than {MAX_MLMODEL_BYTES // 1024} KiB; an MLflow "
                             "MLmodel file is a few KiB")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ModelLoadError(f"{path} is nested too deeply to be an MLmodel file") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a mapping, not {type(data).__name__}")
    flavors = data.get("flavors")
    if not isinstance(flavors, dict) or not flavors:
        raise ModelLoadError(f"{path} has no 'flavors' mapping, so it is not an MLflow model")
    bad = [str(name) for name, conf in flavors.items()
           if not isinstance(name, str) or not isinstance(conf, dict | None)]
    if bad:
        raise ModelLoadError(f"{path}: flavor(s) {', '.join(bad)} must each be a mapping")
    return data


def resolve(folder: Path) -> MLflowModel:
    """The runtime and artifact for the MLflow model in ``folder``; a ModelLoadError says why
    none can be served (the flavors found and the ones Turnout serves)."""
    path = folder / MLMODEL_FILE
    data = read_mlmodel(path)
    flavors: dict[str, Any] = {name: conf or {} for name, conf in data["flavors"].items()}
    refusals = []
    for flavor in SERVED_FLAVORS:
        if flavor not in flavors:
            continue
        try:
            runtime, artifact = _RESOLVERS[flavor](folder, flavors[flavor])
        except _Refused as exc:
            refusals.append(f"{flavor}: {exc}")
            continue
        inputs, outputs = signature_specs(data.get("signature"))
        return MLflowModel(flavor, runtime, artifact, tuple(flavors), inputs, outputs)
    if refusals:
        raise ModelLoadError(f"{path}: cannot serve this MLflow model: {'; '.join(refusals)}")
    hint = (" (python_function runs the model's own Python code through MLflow, which Turnout "
            "does not embed; log it with a framework flavor)" if "python_function" in flavors
            else "")
    raise ModelLoadError(f"{path}: no flavor Turnout can serve: it has {', '.join(flavors)}; "
                         f"Turnout serves {', '.join(SERVED_FLAVORS)}{hint}")


def signature_specs(signature: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The ``signature``'s inputs and outputs as tensor specs, each side empty unless every
    entry maps cleanly (named or not: ``input-N`` / ``output-N``)."""
    if not isinstance(signature, dict):
        return [], []
    return (_schema_specs(signature.get("inputs"), "input"),
            _schema_specs(signature.get("outputs"), "output"))


def _schema_specs(schema: Any, prefix: str) -> list[TensorSpec]:
    try:
        entries = json.loads(schema) if isinstance(schema, str) else None
    except ValueError:
        return []
    if not isinstance(entries, list) or not entries:
        return []
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return []
        name = entry.get("name")
        name = name if isinstance(name, str) and name else f"{prefix}-{i}"
        if entry.get("type") == "tensor":
            tensor = entry.get("tensor-spec")
            if not isinstance(tensor, dict):
                return []
            datatype = _TENSOR_DATATYPES.get(str(tensor.get("dtype")))
            shape = tensor.get("shape")
            if datatype is None or not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
                return []
            specs.append(TensorSpec(name, datatype, tuple(shape)))
        else:  # a column of a DataFrame schema: one value per row
            datatype = _COLUMN_DATATYPES.get(str(entry.get("type")))
            if datatype is None or "name" not in entry:
                return []
            specs.append(TensorSpec(name, datatype, (-1,)))
    if len({spec.name for spec in specs}) != len(specs):
        return []
    return specs


# -- one resolver per flavor: (runtime, artifact) or _Refused -----------------------------------

def _member(folder: Path, conf: dict[str, Any], key: str, default: str | None = None) -> Path:
    """The file or folder ``conf[key]`` names, inside ``folder`` and present."""
    value = conf.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _Refused(f"'{key}' must name a file in the model folder, not {_shown(value)}")
    relative = PurePosixPath(value)
    if relative.is_absolute() or ".." in relative.parts or "\\" in value:
        raise _Refused(f"'{key}: {_shown(value)}' points outside the model folder")
    if not relative.parts:
        raise _Refused(f"'{key}: {_shown(value)}' names the model folder itself, not a file "
                       "in it")
    path = folder.joinpath(*relative.parts)
    if not path.exists():
        raise _Refused(f"'{key}: {_shown(value)}' does not exist")
    return path


def _file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise _Refused(f"'{key}' names {path.name}, which is not a file")
    return path


def _onnx(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    return "onnx", _file(_member(folder, conf, "data"), "data")


def _xgboost(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    return "xgboost", _file(_member(folder, conf, "data"), "data")


def _lightgbm(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    path = _file(_member(folder, conf, "data"), "data")
    if path.name.endswith(".skops"):
        raise _Refused(
            f"{path.name} is a scikit-learn wrapper ({_shown(conf.get('model_class', 'LGBMModel'))}) "
            "saved with skops, whose LightGBM types Turnout does not trust; log the booster "
            "instead (mlflow.lightgbm.log_model(model.booster_, ...) writes model.lgb)")
    if path.name.endswith((".pkl", ".pickle", ".joblib")):
        return "sklearn", path  # a pickled wrapper is an sklearn estimator, under pickle rules
    return "lightgbm", path


def _sklearn(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    path = _file(_member(folder, conf, "pickled_model"), "pickled_model")
    if not path.name.endswith(_SKLEARN_SUFFIXES):
        raise _Refused(f"pickled_model {path.name} must end in {', '.join(_SKLEARN_SUFFIXES)}")
    return "sklearn", path


def _pytorch(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    data = _member(folder, conf, "model_data", "data")
    if data.is_file():
        candidates = [data]
    else:
        candidates = [data / "model.pt2", data / "model.pth"]
    for path in candidates:
        if path.is_file() and path.name.endswith(".pt2"):
            return "torch", path
        if path.is_file() and _is_torchscript(path):
            return "torch", path
    pickled = next((p for p in candidates if p.is_file()), None)
    what = f"{pickled.name} is a pickled torch.nn.Module (torch.save)" if pickled else \
        "model_data holds neither model.pt2 nor a TorchScript model.pth"
    raise _Refused(
        f"{what}; Turnout serves torch.export programs and TorchScript, never pickled modules "
        "(they run code when loaded): log the model with torch.export, "
        "mlflow.pytorch.log_model(model, ..., input_example=x, serialization_format='pt2') "
        "(export_model=True in older MLflow), which writes data/model.pt2")


def _is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive (code/ and constants.pkl), not a ``torch.save`` pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return (any("/code/" in name for name in names)
            and any(name.endswith("/constants.pkl") for name in names))


def _saved_model(folder: Path, key: str) -> Path:
    if not (folder / "saved_model.pb").is_file():
        raise _Refused(f"'{key}' names {folder.name}, which holds no saved_model.pb")
    return folder


def _tensorflow(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    if conf.get("model_type") == "keras" or "saved_model_dir" not in conf:
        return _keras(folder, conf)
    return "tensorflow", _saved_model(_member(folder, conf, "saved_model_dir"),
                                      "saved_model_dir")


def _keras(folder: Path, conf: dict[str, Any]) -> tuple[str, Path]:
    data = _member(folder, conf, "data", "data")
    exported = data / "model"
    if exported.is_dir():
        return "tensorflow", _saved_model(exported, "data")
    files = sorted(p.name for p in data.glob("model.*")) if data.is_dir() else [data.name]
    raise _Refused(
        f"{', '.join(files) or 'data'} is a Keras file, which Turnout does not load; serve a "
        "SavedModel: mlflow.keras.log_model(model, ..., save_exported_model=True), or "
        "model.export(DIR) and serve DIR")


_RESOLVERS = {"onnx": _onnx, "xgboost": _xgboost, "lightgbm": _lightgbm, "sklearn": _sklearn,
              "pytorch": _pytorch, "tensorflow": _tensorflow, "keras": _keras}


def _shown(value: Any, limit: int = 80) -> str:
    """A value from the MLmodel as a reason quotes it: short, whatever the file holds."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's problem and where, without echoing the file's content."""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"
