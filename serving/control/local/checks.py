"""The checks of an apply that need this machine: does a local model exist, and is it the
framework the manifest says? Remote URIs are checked for a filesystem that can read them;
their content is checked by the model servers that fetch them (a mismatch fails the revision's
replicas with the reason in their log)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from serving.control.policy.formats import FormatError, runtime_for
from serving.protocol.errors import ModelLoadError
from serving.runtime.base import detect_runtime
from serving.runtime.settings import SETTINGS_FILE, read_settings_file
from serving.spec.inferenceservice import InferenceService
from serving.storage import StorageError, is_remote, local_path, split_pin, verify_pin

_REMOTE_EXTRAS = {"http": "storage", "https": "storage", "s3": "s3", "s3a": "s3", "gs": "gcs",
                  "gcs": "gcs"}


def resolve(uri: str, base: Path) -> str:
    """What replicas are given: an absolute path for a local URI (its ``#sha256=`` pin kept,
    for the replica to check), a remote URI unchanged."""
    if is_remote(uri):
        return uri
    bare, digest = split_pin(uri)
    path = str(local_path(bare, base=base).resolve())
    return f"{path}#sha256={digest}" if digest else path


# Formats whose artifacts are pickles (joblib, pkl): loading one runs its code.
PICKLE_FORMATS = frozenset({"sklearn"})


def storage_problems(isvc: InferenceService, base: Path, trusted: tuple[str, ...] = (),
                     roots: tuple[Path, ...] = ()) -> list[str]:
    """What keeps the service's storage URI from being served here. ``roots``: folders local
    models must be inside (symlinks resolved); empty means anywhere this user can read."""
    model = isvc.spec.predictor.resolved()
    where = "spec.predictor.model.storageUri" if isvc.spec.predictor.model is not None \
        else f"spec.predictor.{model.modelFormat.name}.storageUri"
    uri = model.storageUri or ""
    try:
        bare, digest = split_pin(uri)
    except StorageError as exc:
        return [f"{where}: {exc}"]
    if is_remote(uri):
        scheme = urlsplit(uri).scheme
        if scheme not in _REMOTE_EXTRAS:
            return [f"{where}: {uri!r}: scheme {scheme}:// is not supported (file, http(s), "
                    "s3, gs)"]
        if model.modelFormat.name.lower() in PICKLE_FORMATS and "*" not in trusted \
                and not any(uri.startswith(prefix) for prefix in trusted):
            return [f"{where}: {uri!r}: {model.modelFormat.name} models are pickles, which run "
                    "code when loaded, and this source is not trusted: start turnout up with "
                    "--trusted-source PREFIX (or --trust-remote-pickle)"]
        try:
            import fsspec  # noqa: F401
        except ImportError:
            return [f"{where}: {uri!r} needs fsspec: install turnout[{_REMOTE_EXTRAS[scheme]}]"]
        return []
    path = local_path(bare, base=base)
    if not path.exists():
        return [f"{where}: {uri!r}: {path} does not exist"]
    if (outside := _outside(path, roots, where, uri)) is not None:
        return [outside]
    if digest is not None:
        try:
            verify_pin(bare, path, digest)
        except StorageError as exc:
            return [f"{where}: {exc}"]
    try:
        expected = runtime_for(model.modelFormat.name, model.runtime)
    except FormatError:
        return []  # reported by the format check
    found = artifact_runtime(path)
    if found is not None and found != expected and ":" not in found:
        return [f"{where}: {uri!r} holds a {found} model, but modelFormat "
                f"{model.modelFormat.name!r} is served by the {expected} runtime"]
    return []


def artifact_runtime(path: Path) -> str | None:
    """The runtime a model path would be served by on its own; None when it cannot be told
    without loading it (a model-settings.yaml naming none, unknown files)."""
    if path.is_dir():
        versions = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()),
                          key=lambda p: int(p.name))
        settings = path / SETTINGS_FILE
        if settings.is_file():
            try:
                named = read_settings_file(settings).get("runtime")
            except ModelLoadError:
                return None
            if named:
                return str(named)
        if versions:
            return artifact_runtime(versions[-1])
    try:
        return detect_runtime(path)
    except (ModelLoadError, OSError):
        return None


def transformer_problems(isvc: InferenceService, base: Path,
                         roots: tuple[Path, ...] = ()) -> list[str]:
    """What keeps ``spec.transformer.turnout`` from running here: its folder holds Python
    code that runs in the transformer, so it must be a local folder inside the model roots."""
    spec = isvc.spec.transformer
    if spec is None or spec.turnout is None:
        return []
    where, uri = "spec.transformer.turnout.storageUri", spec.turnout.storageUri
    if is_remote(uri):
        return [f"{where}: {uri!r}: a transformer's code must be a local folder (it runs as "
                "Python in the transformer process)"]
    path = local_path(uri, base=base)
    if not path.is_dir():
        return [f"{where}: {uri!r}: {path} is not a folder"]
    if (outside := _outside(path, roots, where, uri)) is not None:
        return [outside]
    module = spec.turnout.modelClass.partition(":")[0].replace(".", "/")
    if not ((path / f"{module}.py").is_file() or (path / module / "__init__.py").is_file()):
        return [f"spec.transformer.turnout.modelClass {spec.turnout.modelClass!r}: no "
                f"{module}.py in {uri!r}"]
    return []


def _outside(path: Path, roots: tuple[Path, ...], where: str, uri: str) -> str | None:
    """The problem of a local path outside every model root (symlinks resolved), if it is."""
    if roots and not any(path.resolve().is_relative_to(r.resolve()) for r in roots):
        return (f"{where}: {uri!r} is outside the allowed model roots "
                f"({', '.join(str(r) for r in roots)}; turnout up --model-root)")
    return None
