"""The model repository: finds models on disk, loads each version, tracks state and reasons.

Layout: ``ROOT/<name>/[<version>/]<artifact>`` with an optional ``model-settings.yaml`` in the
model folder (applies to all versions) or a version folder (overrides). Versions are integer
folders; the highest is the default. A model that fails to load is kept as UNAVAILABLE with
its reason, so the rest of the repository serves.

Loading runs in a worker thread (frameworks block); the swap into the live table happens on
the event loop, so readers never see a half-loaded model.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.protocol.errors import InvalidInput, ModelLoadError, ModelNotFound
from serving.protocol.types import RepositoryEntry
from serving.runtime.base import (
    Runtime,
    artifact_candidates,
    available_runtimes,
    detect_runtime,
    resolve_runtime,
)
from serving.runtime.cache import default_cache_dir
from serving.runtime.mlmodel import MLMODEL_FILE
from serving.runtime.settings import SETTINGS_FILE, build_settings, read_settings_file
from serving.server import autobatch
from serving.server.batching import AdaptiveBatcher
from serving.server.execution import resolve_execution
from serving.server.metrics import Metrics
from serving.storage import check_trusted, fetch

log = logging.getLogger("turnout.repository")

State = Literal["LOADING", "READY", "UNAVAILABLE"]


@dataclass(slots=True)
class ModelVersion:
    name: str
    version: str
    folder: Path
    state: State = "LOADING"
    reason: str = ""
    runtime: Runtime | None = None
    platform: str = ""
    batcher: AdaptiveBatcher | None = None  # created on first request, on the serving loop
    admitted: int = 0        # unbatched threaded predicts running or waiting for a thread
    admit_limit: int = 0     # set on first request (see DataPlane._admission_limit)


@dataclass(slots=True, frozen=True)
class ModelSource:
    """Where one model's versions live on disk, before anything is loaded."""

    name: str
    versions: dict[str, Path]  # version -> file or folder holding the artifact
    base_settings: dict[str, Any]
    # Settings the command line imposes over model-settings.yaml (a transformer's runtime and
    # predictor); dict values (parameters) are merged key by key.
    overrides: dict[str, Any] = field(default_factory=dict)


def _artifact_suffixes() -> tuple[str, ...]:
    return tuple(s for cls in available_runtimes().values() for s in cls.artifact_suffixes)


def _is_model_dir(path: Path) -> bool:
    if (path / SETTINGS_FILE).is_file() or (path / MLMODEL_FILE).is_file():  # MLflow's too
        return True
    if any(c.name.endswith(_artifact_suffixes()) for c in artifact_candidates(path)):
        return True
    dirs = [c for c in path.iterdir() if c.is_dir()]
    return bool(dirs) and all(d.name.isdigit() for d in dirs)


def _source_for(name: str | None, path: Path, version: str | None = None) -> ModelSource:
    base: dict[str, Any] = {}
    if path.is_dir() and (path / SETTINGS_FILE).is_file():
        base = read_settings_file(path / SETTINGS_FILE)
    model_name = name or base.get("name") or (path.stem if path.is_file() else path.name)
    if path.is_dir():
        numbered = {c.name: c for c in path.iterdir() if c.is_dir() and c.name.isdigit()}
        versions = {str(int(v)): p for v, p in numbered.items()} or {version or "1": path}
    else:
        versions = {version or "1": path}
    return ModelSource(name=str(model_name), versions=versions, base_settings=base)


def discover(path: Path, *, name: str | None = None, model_class: str | None = None,
             version: str | None = None,
             overrides: dict[str, Any] | None = None) -> list[ModelSource]:
    """Models under ``path``: one model (a file or model folder) or a folder of models.

    ``version``: the version a single unversioned model reports (a registry version), "1"
    when not given.

    With ``model_class`` (``turnout serve --model-class``) ``path`` is one model run by that
    custom Python class, unless its own settings name another.
    """
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if model_class:
        source = _source_for(name, path, version)
        base = {"model_class": model_class, **source.base_settings}
        return [ModelSource(source.name, source.versions, base, dict(overrides or {}))]
    if path.is_file() or _is_model_dir(path):
        return [_source_for(name, path, version)]
    if name:
        raise ValueError(f"--name names one model, but {path} is a folder of models")
    return [_source_for(None, child) for child in sorted(path.iterdir())
            if child.is_dir() and not child.name.startswith(".") and _is_model_dir(child)]


def _load_version(source: ModelSource, version: str, folder: Path,
                  default_batching: dict[str, Any] | None = None,
                  expected_runtime: str | None = None,
                  trusted: tuple[str, ...] = (),
                  auto_batching: bool = True) -> tuple[Runtime, float]:
    """Build settings, pick the runtime and load; raises ModelLoadError on any failure."""
    fields = dict(source.base_settings)
    if folder.is_dir() and (folder / SETTINGS_FILE).is_file():
        fields.update(read_settings_file(folder / SETTINGS_FILE))
    for key, value in source.overrides.items():
        fields[key] = {**(fields.get(key) or {}), **value} if isinstance(value, dict) else value
    fields.update(name=source.name, version=version, artifact=folder)
    if default_batching is not None and fields.get("batching") is None:
        fields["batching"] = default_batching  # the server-wide default (--max-batch-size)
    settings = build_settings(**fields)
    if settings.storage_uri:  # the artifact lives elsewhere: fetch it (or reuse the cache)
        settings.artifact = fetch(settings.storage_uri, options=settings.storage_options,
                                  base=folder if folder.is_dir() else folder.parent)
        check_trusted(settings.storage_uri, settings.artifact, trusted)
    runtime_name = settings.runtime or detect_runtime(settings.artifact)
    if expected_runtime is not None:
        check_runtime(runtime_name, expected_runtime, declared=settings.runtime is not None)
    runtime_cls = resolve_runtime(runtime_name)
    started = time.perf_counter()
    try:
        runtime = runtime_cls(settings)  # a broken runtime class fails here, for this model only
        runtime.load()
    except ModelLoadError:
        raise
    except ImportError as exc:  # frameworks are imported lazily, on first load
        raise ModelLoadError(f"runtime '{runtime_name}' needs a framework that is not installed "
                             f"({exc}); install turnout[{runtime_name}]") from exc
    except Exception as exc:  # frameworks raise anything on a bad file
        raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc
    resolve_execution(runtime)
    if auto_batching and settings.auto_batching and settings.batching is None:
        runtime.settings.batching = autobatch.decide(runtime)
    return runtime, time.perf_counter() - started


def check_runtime(found: str, expected: str, *, declared: bool) -> None:
    """A model must be served by the runtime its manifest names (``--runtime``): an artifact
    of another framework is an error, not a silent switch. A custom runtime class that the
    model's own settings name (``module:Class``) is the user's explicit choice and stands."""
    if found == expected or ":" in found:
        return
    what = "model-settings.yaml names" if declared else "the artifact is for"
    raise ModelLoadError(f"{what} the {found} runtime, but the manifest asks for {expected} "
                         "(modelFormat / runtime)")


# An absolute path in a message: a "/" that starts a word (not a URL's or a relative path's).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\-])(/[^\s'\"():,;]+)")


class ModelRepository:
    """Live table of model versions, with load/unload by name from the repository path."""

    def __init__(self, *, path: Path | None, name: str | None, metrics: Metrics,
                 model_class: str | None = None,
                 default_batching: dict[str, Any] | None = None,
                 runtime: str | None = None, trusted_sources: list[str] | None = None,
                 version: str | None = None,
                 overrides: dict[str, Any] | None = None,
                 auto_batching: bool | None = None) -> None:
        self._auto_batching = autobatch.enabled_by_env() if auto_batching is None \
            else auto_batching
        self._version = version
        self._overrides = overrides
        self._default_batching = default_batching
        self._runtime = runtime
        self._trusted = tuple(trusted_sources or ())
        self._path = path
        self._name = name
        self._model_class = model_class
        self._metrics = metrics
        self._models: dict[str, dict[str, ModelVersion]] = {}
        self._latest: dict[str, ModelVersion] = {}  # highest version per model: asked per request
        self._locks: dict[str, asyncio.Lock] = {}

    def _discover(self) -> list[ModelSource]:
        assert self._path is not None
        return discover(self._path, name=self._name, model_class=self._model_class,
                        version=self._version, overrides=self._overrides)

    async def load_all(self) -> None:
        if self._path is None:
            return
        for source in self._discover():
            await self._load_source(source)

    async def load(self, name: str) -> None:
        """(Re)load a model from disk by name; on failure the previous versions keep serving."""
        source = self._find_source(name)
        await self._load_source(source)
        failed = [v for v in self._models[name].values() if v.state != "READY"]
        if failed:
            raise InvalidInput(f"failed to load model '{name}': {failed[0].reason}")

    async def unload(self, name: str) -> None:
        if name not in self._models:
            raise ModelNotFound(f"model '{name}' is not loaded")
        versions = self._models.pop(name)
        self._latest.pop(name, None)
        for mv in versions.values():
            self._set_ready_gauge(mv, False)
            if mv.runtime is not None:
                mv.runtime.unload()
        log.info("unloaded model %s", name)

    def get(self, name: str, version: str | None) -> ModelVersion:
        if not version:
            latest = self._latest.get(name)
            if latest is None:
                raise ModelNotFound(f"model '{name}' is not found")
            return latest
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' is not found")
        try:
            return versions[version]
        except KeyError:
            raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: "
                                f"{', '.join(sorted(versions, key=int))}") from None

    def names(self) -> list[str]:
        return list(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=int)

    def all_ready(self) -> bool:
        return all(v.state == "READY" for vs in self._models.values() for v in vs.values())

    def index(self) -> list[RepositoryEntry]:
        entries = [RepositoryEntry(mv.name, mv.version, mv.state, mv.reason)
                   for versions in self._models.values() for mv in versions.values()]
        if self._path is not None:
            try:
                known = {s.name for s in self._discover()}
            except (OSError, ValueError, ModelLoadError):
                known = set()
            entries += [RepositoryEntry(n, "", "UNAVAILABLE", "unloaded")
                        for n in sorted(known - set(self._models))]
        return sorted(entries, key=lambda e: (e.name, int(e.version or 0)))

    def _find_source(self, name: str) -> ModelSource:
        if self._path is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        try:
            sources = self._discover()
        except (OSError, ValueError) as exc:
            raise ModelNotFound(f"cannot read the repository: {self._public(str(exc))}") from exc
        for source in sources:
            if source.name == name:
                return source
        raise ModelNotFound(f"model '{name}' is not in the repository")

    async def _load_source(self, source: ModelSource) -> None:
        lock = self._locks.setdefault(source.name, asyncio.Lock())
        async with lock:
            loaded: dict[str, ModelVersion] = {}
            for version, folder in source.versions.items():
                loaded[version] = await self._load_one(source, version, folder)
            previous = self._models.get(source.name, {})
            if previous and not any(v.state == "READY" for v in loaded.values()):
                return  # keep serving the old versions; the caller reports the failure
            self._models[source.name] = loaded
            if loaded:
                self._latest[source.name] = loaded[max(loaded, key=int)]
            else:
                self._latest.pop(source.name, None)
            for old in previous.values():
                if old.runtime is not None and old not in loaded.values():
                    old.runtime.unload()
            self._metrics.models_loaded.set(
                sum(v.state == "READY" for vs in self._models.values() for v in vs.values()))

    async def _load_one(self, source: ModelSource, version: str, folder: Path) -> ModelVersion:
        mv = ModelVersion(name=source.name, version=version, folder=folder)
        try:
            runtime, seconds = await asyncio.to_thread(_load_version, source, version, folder,
                                                        self._default_batching, self._runtime,
                                                        self._trusted, self._auto_batching)
        except ModelLoadError as exc:
            mv.state, mv.reason = "UNAVAILABLE", self._public(str(exc))
            log.error("model %s version %s failed to load: %s", source.name, version, exc)
        else:
            mv.state, mv.runtime, mv.platform = "READY", runtime, runtime.platform
            self._metrics.load_duration.labels(source.name, version).observe(seconds)
            log.info("loaded model %s version %s (%s) in %.3fs", source.name, version,
                     runtime.name, seconds)
        self._set_ready_gauge(mv, mv.state == "READY")
        return mv

    def _public(self, reason: str) -> str:
        """A load failure's reason as clients see it: paths relative to the repository and
        the model cache, never this machine's absolute paths (the log keeps those)."""
        roots = [(default_cache_dir(), "<model cache>")]
        if self._path is not None:
            root = self._path.resolve()
            roots.append((root if root.is_dir() else root.parent, "."))
        for path, shown in roots:
            for text in {str(path), str(path.resolve())}:
                reason = reason.replace(text + "/", "" if shown == "." else shown + "/")
                reason = reason.replace(text, shown)
        # any other absolute path (a framework's own files, a symlink's target): its last part
        return _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(1).rstrip("/").rsplit("/", 1)[-1],
                                  reason)

    def _set_ready_gauge(self, mv: ModelVersion, ready: bool) -> None:
        self._metrics.model_ready.labels(mv.name, mv.version).set(1 if ready else 0)
