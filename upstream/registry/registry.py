"""The MLflow model registry, as Turnout uses it: register a model folder, resolve ``models:/``
URIs to one version, make its files loadable, move aliases, tag versions.

MLflow is imported only inside the methods that talk to it (:func:`_mlflow`): importing it costs
~1,300 modules and ~140 MiB, starts telemetry and installs log handlers unless told otherwise.

Which registry: the ``tracking_uri`` argument, else ``MLFLOW_TRACKING_URI`` (with
``MLFLOW_REGISTRY_URI`` when set), else an SQLite database in the local control plane's state
folder, ``sqlite:///<state_dir>/registry.db`` (``state_dir`` defaults to ``./.turnout``), whose
run artifacts go to ``<state_dir>/mlartifacts``.

How a folder becomes a version: its files are logged as the artifacts of an MLflow run (under
``model/``), and a version is created whose source is that artifact folder
(``<run artifact URI>/model``), so ``get_model_version_download_uri`` names exactly the folder's
content: what :meth:`Registry.fetch` returns is what was registered, file for file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from upstream.registry.uris import (
    ModelRef,
    RegistryError,
    check_alias,
    check_name,
    check_version,
    parse_models_uri,
    pinned_uri,
)

log = logging.getLogger("upstream.registry")

DEFAULT_STATE_DIR = Path(".turnout")
REGISTRY_DB = "registry.db"
ARTIFACTS_DIR = "mlartifacts"
DEFAULT_EXPERIMENT = "turnout"
MODEL_ARTIFACT_PATH = "model"  # the folder's files live under <run artifacts>/model

# Tags written on every version Turnout registers.
FRAMEWORK_TAG = "turnout.framework"
SIGNATURE_TAG = "turnout.signature"
METRIC_TAG_PREFIX = "turnout.metric."
LINEAGE_TAG_PREFIX = "turnout.lineage."
# Tag on the run that logged the folder.
RUN_MODEL_TAG = "turnout.registered_model"

# Download locations the model server cannot read itself: fetched with MLflow into the cache.
_DOWNLOAD_SCHEMES = frozenset({"mlflow-artifacts", "runs", "models", "dbfs"})
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_PROBE_TIMEOUT_S = 5.0
_MAX_MESSAGE = 400


def quiet_mlflow_environment() -> None:
    """Telemetry off and MLflow's logging left alone, unless the environment already says
    otherwise: the only changes this package makes to the process's environment."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def _mlflow() -> Any:
    """``import mlflow``, in the environment :func:`quiet_mlflow_environment` sets."""
    quiet_mlflow_environment()
    import mlflow

    return mlflow


@dataclass(frozen=True)
class ResolvedVersion:
    """One registered model version, as found in the registry."""

    name: str
    version: str
    pinned_uri: str          # models:/name/version
    download_uri: str        # where MLflow says its files are (get_model_version_download_uri)
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def framework(self) -> str | None:
        return self.tags.get(FRAMEWORK_TAG)

    @property
    def metrics(self) -> dict[str, float]:
        """The ``turnout.metric.<name>`` tags, as numbers."""
        found = {}
        for key, value in self.tags.items():
            if key.startswith(METRIC_TAG_PREFIX):
                with contextlib.suppress(ValueError):
                    found[key[len(METRIC_TAG_PREFIX):]] = float(value)
        return found

    @property
    def lineage(self) -> dict[str, str]:
        """The ``turnout.lineage.<key>`` tags (pipeline run, pipeline, dataset...)."""
        return {k[len(LINEAGE_TAG_PREFIX):]: v for k, v in self.tags.items()
                if k.startswith(LINEAGE_TAG_PREFIX)}

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]] | None:
        """``{"inputs": [...], "outputs": [...]}`` from ``turnout.signature``, if any."""
        raw = self.tags.get(SIGNATURE_TAG)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class RegisteredModelSummary:
    name: str
    latest_version: str | None
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> version
    description: str = ""


class Registry:
    """One MLflow registry (and the tracking store its runs go to). Every method blocks on the
    database or the server; errors are :class:`RegistryError` with a message for users."""

    def __init__(self, tracking_uri: str | None = None, *, state_dir: Path | None = None,
                 registry_uri: str | None = None) -> None:
        quiet_mlflow_environment()  # before anyone in this process imports MLflow
        self.state_dir = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR).absolute()
        env_tracking = os.environ.get("MLFLOW_TRACKING_URI") or None
        env_registry = os.environ.get("MLFLOW_REGISTRY_URI") or None
        if tracking_uri:
            # An explicit tracking URI (--tracking-uri) names the registry too, unless one is
            # given beside it: an environment variable must not split them behind the caller.
            self.tracking_uri = tracking_uri
            self.registry_uri = registry_uri or tracking_uri
        else:
            self.tracking_uri = env_tracking or _sqlite_uri(self.state_dir / REGISTRY_DB)
            self.registry_uri = registry_uri or env_registry or self.tracking_uri
        self._client_obj: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Registry({redact(self.tracking_uri)!r})"

    # ---- resolving and fetching -------------------------------------------------------

    def resolve(self, uri_or_ref: str | ModelRef) -> ResolvedVersion:
        """The version ``models:/name/3`` or ``models:/name@alias`` names now."""
        ref = uri_or_ref if isinstance(uri_or_ref, ModelRef) else parse_models_uri(uri_or_ref)
        client = self._client(create=False)
        if client is None:
            raise self._unknown_model(None, ref.name)
        model = self._registered_model(client, ref.name)
        aliases = _aliases(model)
        if ref.alias is not None:
            version = aliases.get(ref.alias)
            if version is None:
                raise RegistryError(f"model {ref.name!r} has no alias {ref.alias!r} "
                                    f"({_describe_aliases(aliases)})")
        else:
            assert ref.version is not None
            version = ref.version
        return self._resolved(client, ref.name, version, aliases)

    def fetch(self, resolved: ResolvedVersion, cache_dir: Path | None = None) -> str:
        """A location a model server can load for ``resolved``.

        * ``file:`` URIs and plain paths: the local path (checked to exist);
        * ``mlflow-artifacts:`` (a tracking server proxying artifacts), ``runs:``, ``models:``,
          ``dbfs:``: downloaded with MLflow into ``cache_dir/<name>/<version>-<hash>`` (default
          cache: ``default_cache_dir()/registry``), once: concurrent fetches of one version,
          threads or processes, wait on a file lock and reuse the first one's download;
        * anything else (``s3://``, ``gs://``, ``http(s)://``...): returned unchanged; the model
          server's storage layer fetches it.
        """
        uri = resolved.download_uri
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter too)
            path = Path(unquote(parts.path)) if scheme == "file" else Path(uri)
            if not path.exists():
                raise RegistryError(
                    f"{resolved.pinned_uri}: its files are at {path}, which does not exist on "
                    "this machine (registered on another machine or deleted?)")
            return str(path)
        if scheme not in _DOWNLOAD_SCHEMES:
            return uri
        return self._download_cached(resolved, cache_dir)

    # ---- registering ------------------------------------------------------------------

    def register(self, folder: Path, name: str, *, framework: str,
                 metrics: dict[str, float] | None = None, params: dict | None = None,
                 inputs: list[dict] | None = None, outputs: list[dict] | None = None,
                 lineage: dict[str, str] | None = None, alias: str | None = None,
                 description: str = "", experiment: str = DEFAULT_EXPERIMENT) -> ResolvedVersion:
        """Register ``folder``'s files as a new version of model ``name``.

        The files are logged as the artifacts of a run in ``experiment`` (with ``params`` and
        ``metrics``), and the version's source is that artifact folder. ``inputs``/``outputs``
        default to those in the folder's ``model-settings.yaml``, ``metrics`` to its
        ``metrics.json``. Tags: ``turnout.framework``, ``turnout.signature`` (JSON of inputs and
        outputs), ``turnout.metric.<k>``, ``turnout.lineage.<k>``. ``alias``, if given, is moved
        to the new version.
        """
        folder = Path(folder)
        check_name(name)
        if alias is not None:
            check_alias(alias)
        if not isinstance(framework, str) or not framework.strip():
            raise RegistryError("register: framework is empty (sklearn, onnx, xgboost...)")
        if not folder.is_dir():
            raise RegistryError(f"register: {folder} is not a folder")
        if not any(p.is_file() for p in folder.rglob("*")):
            raise RegistryError(f"register: {folder} holds no files")
        settings = _read_settings(folder)
        if inputs is None:
            inputs = settings.get("inputs") or []
        if outputs is None:
            outputs = settings.get("outputs") or []
        if metrics is None:
            metrics = _read_metrics(folder)
        metrics = _numeric_metrics(metrics)
        lineage = {str(k): str(v) for k, v in (lineage or {}).items() if v is not None}

        tags = {FRAMEWORK_TAG: framework.strip()}
        if inputs or outputs:
            tags[SIGNATURE_TAG] = json.dumps({"inputs": inputs, "outputs": outputs},
                                             sort_keys=True, default=str)
        tags.update({METRIC_TAG_PREFIX + k: repr(v) for k, v in metrics.items()})
        tags.update({LINEAGE_TAG_PREFIX + k: v for k, v in lineage.items()})

        _mlflow()
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.exceptions import MlflowException

        client = self._client(create=True)
        assert client is not None
        with self._errors(f"register {name}"):
            experiment_id = self._experiment(client, experiment)
            run = client.create_run(
                experiment_id, run_name=f"register-{name}",
                tags={RUN_MODEL_TAG: name, FRAMEWORK_TAG: tags[FRAMEWORK_TAG],
                      **{LINEAGE_TAG_PREFIX + k: v for k, v in lineage.items()}})
            run_id = run.info.run_id
            status = RunStatus.to_string(RunStatus.FAILED)
            try:
                now = int(time.time() * 1000)
                flat = _flatten(params or {})
                items = [Param(k, v) for k, v in flat.items()]
                for start in range(0, len(items), 100):  # MLflow's batch limit for params
                    client.log_batch(run_id, params=items[start:start + 100])
                if metrics:
                    client.log_batch(run_id, metrics=[Metric(k, v, now, 0)
                                                      for k, v in metrics.items()])
                client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT_PATH)
                status = RunStatus.to_string(RunStatus.FINISHED)
            finally:
                # set_terminated prints "View run ... at" links on stdout for a tracking server.
                with contextlib.redirect_stdout(io.StringIO()):
                    client.set_terminated(run_id, status=status)
            source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
            try:
                client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = client.create_model_version(name, source=source, run_id=run_id, tags=tags,
                                                  description=description or None)
            version_id = str(version.version)
            if alias is not None:
                client.set_registered_model_alias(name, alias, version_id)
        log.info("registered %s as %s (run %s)", folder, pinned_uri(name, version_id), run_id)
        return self.resolve(ModelRef(name, version=version_id))

    # ---- aliases and tags -------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` of model ``name`` at ``version`` (moving it if set elsewhere)."""
        check_name(name)
        check_alias(alias)
        version = check_version(str(version))
        client = self._existing_client(name)
        self._model_version(client, name, version)
        with self._errors(f"set alias {alias!r} of {name}"):
            client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        check_name(name)
        check_alias(alias)
        client = self._existing_client(name)
        aliases = _aliases(self._registered_model(client, name))
        if alias not in aliases:
            raise RegistryError(f"model {name!r} has no alias {alias!r} "
                                f"({_describe_aliases(aliases)})")
        with self._errors(f"delete alias {alias!r} of {name}"):
            client.delete_registered_model_alias(name, alias)

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        check_name(name)
        version = check_version(str(version))
        if not isinstance(key, str) or not key:
            raise RegistryError("tag key is empty")
        client = self._existing_client(name)
        self._model_version(client, name, version)
        with self._errors(f"set tag {key!r} on {pinned_uri(name, version)}"):
            client.set_model_version_tag(name, version, key, str(value))

    # ---- listing ----------------------------------------------------------------------

    def models(self) -> list[RegisteredModelSummary]:
        """Every registered model, by name, with its latest version and aliases."""
        client = self._client(create=False)
        if client is None:
            return []
        found = []
        with self._errors("list registered models"):
            for model in _paged(lambda token: client.search_registered_models(
                    max_results=1000, page_token=token)):
                versions = [int(v.version) for v in (model.latest_versions or [])]
                found.append(RegisteredModelSummary(
                    name=model.name, latest_version=str(max(versions)) if versions else None,
                    aliases=_aliases(model), description=model.description or ""))
        return sorted(found, key=lambda m: m.name)

    def versions(self, name: str) -> list[ResolvedVersion]:
        """Every version of model ``name``, newest first."""
        check_name(name)
        client = self._existing_client(name)
        aliases = _aliases(self._registered_model(client, name))
        with self._errors(f"list the versions of {name}"):
            found = list(_paged(lambda token: client.search_model_versions(
                f"name='{name}'", max_results=1000, page_token=token)))
            found.sort(key=lambda v: int(v.version), reverse=True)
            return [self._entity(client, v, aliases) for v in found]

    # ---- internals --------------------------------------------------------------------

    def _client(self, *, create: bool) -> Any:
        """The MlflowClient, or None when the registry is a local SQLite file that does not exist
        yet and ``create`` is false (nothing registered; nothing created by looking)."""
        with self._client_lock:
            if self._client_obj is not None:
                return self._client_obj
            files = sorted({p for p in (_sqlite_path(self.tracking_uri),
                                        _sqlite_path(self.registry_uri)) if p is not None})
            if not create and any(not p.exists() for p in files):
                return None
            for uri in {self.tracking_uri, self.registry_uri}:
                _probe(uri)
            with contextlib.ExitStack() as stack:
                for path in files:
                    # Processes opening a new database race on its migrations: one at a time.
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        lock = stack.enter_context(path.with_name(path.name + ".lock").open("a"))
                    except OSError as exc:
                        if not path.exists():
                            raise RegistryError(f"cannot create the registry database {path}: "
                                                f"{exc.strerror or exc}") from None
                        continue  # a read-only folder: the database exists, nothing to create
                    fcntl.flock(lock, fcntl.LOCK_EX)
                _mlflow()
                from mlflow import MlflowClient

                with self._errors("open the registry"):
                    client = MlflowClient(tracking_uri=self.tracking_uri,
                                          registry_uri=self.registry_uri)
                    if files:  # the registry store is built lazily: build it under the lock
                        client.search_registered_models(max_results=1)
            self._client_obj = client
            return client

    def _existing_client(self, name: str) -> Any:
        client = self._client(create=False)
        if client is None:
            raise self._unknown_model(None, name)
        return client

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """MLflow's exceptions (and connection errors) as one-line :class:`RegistryError`."""
        try:
            yield
        except RegistryError:
            raise
        except Exception as exc:
            raise RegistryError(f"{doing}: {self._explain(exc)}") from None

    def _explain(self, exc: BaseException) -> str:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        message = " ".join(str(message).split())
        unreachable = ("Max retries exceeded", "Connection refused", "ConnectionError",
                       "Failed to establish a new connection", "Name or service not known")
        if any(marker in message for marker in unreachable):
            return f"cannot reach the MLflow tracking server at {redact(self.tracking_uri)}"
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        return message

    def _registered_model(self, client: Any, name: str) -> Any:
        try:
            return client.get_registered_model(name)
        except Exception as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                raise self._unknown_model(client, name) from None
            raise RegistryError(f"model {name!r}: {self._explain(exc)}") from None

    def _unknown_model(self, client: Any, name: str) -> RegistryError:
        known: list[str] = []
        if client is not None:
            with contextlib.suppress(Exception):
                known = sorted(m.name for m in client.search_registered_models(max_results=11))
        where = redact(self.registry_uri)
        if not known:
            return RegistryError(f"unknown model {name!r}: the registry at {where} holds no "
                                 "registered models")
        shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        return RegistryError(f"unknown model {name!r} in the registry at {where} "
                             f"(registered models: {shown})")

    def _model_version(self, client: Any, name: str, version: str) -> Any:
        try:
            return client.get_model_version(name, version)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"{pinned_uri(name, version)}: {self._explain(exc)}") from None
        model = self._registered_model(client, name)  # unknown model: says so
        latest = [int(v.version) for v in (model.latest_versions or [])]
        newest = f"the latest is {max(latest)}" if latest else "it has no versions"
        raise RegistryError(f"model {name!r} has no version {version} ({newest})")

    def _resolved(self, client: Any, name: str, version: str,
                  aliases: Mapping[str, str]) -> ResolvedVersion:
        entity = self._model_version(client, name, version)
        status = getattr(entity, "status", "READY") or "READY"
        if status != "READY":
            raise RegistryError(f"{pinned_uri(name, version)} is not ready (status {status}: "
                                f"{entity.status_message or 'no message'})")
        return self._entity(client, entity, aliases)

    def _entity(self, client: Any, entity: Any, aliases: Mapping[str, str]) -> ResolvedVersion:
        name, version = entity.name, str(entity.version)
        with self._errors(f"{pinned_uri(name, version)}: find its download location"):
            download_uri = client.get_model_version_download_uri(name, version)
        return ResolvedVersion(
            name=name, version=version, pinned_uri=pinned_uri(name, version),
            download_uri=str(download_uri), run_id=entity.run_id or None,
            tags={str(k): str(v) for k, v in (entity.tags or {}).items()},
            aliases=tuple(sorted(a for a, v in aliases.items() if v == version)),
            description=entity.description or "")

    def _experiment(self, client: Any, name: str) -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=self._artifact_location())
            except Exception as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)
        if experiment.lifecycle_stage != "active":
            raise RegistryError(f"experiment {name!r} is deleted; restore it or register into "
                                "another experiment")
        return experiment.experiment_id

    def _artifact_location(self) -> str | None:
        """Where a new experiment's run artifacts go: beside a local SQLite database, in the
        state folder for other databases (MLflow would pick ./mlruns), and wherever the server
        says for a tracking server."""
        database = _sqlite_path(self.tracking_uri)
        if database is not None:
            return (database.parent / ARTIFACTS_DIR).as_uri()
        if urlsplit(self.tracking_uri).scheme.split("+")[0] in _SQL_SCHEMES:
            return (self.state_dir / ARTIFACTS_DIR).as_uri()
        return None

    def _download_cached(self, resolved: ResolvedVersion, cache_dir: Path | None) -> str:
        check_name(resolved.name)  # they become folder names
        check_version(resolved.version)
        uri = resolved.download_uri
        if cache_dir is None:
            from serving.runtime.cache import default_cache_dir

            cache_dir = default_cache_dir() / "registry"
        # The same name and version in two registries (or re-created) are different files.
        digest = hashlib.sha256(f"{self.tracking_uri}\n{uri}".encode()).hexdigest()[:12]
        key = f"{resolved.version}-{digest}"
        parent = Path(cache_dir) / resolved.name
        final = parent / key
        basename = urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1]
        if final.is_dir():
            return str(_cached_target(final, basename))
        try:
            parent.mkdir(parents=True, exist_ok=True)
            # The lock file stays: removing it would let a late comer lock a new inode while a
            # waiter still holds the old one.
            with (parent / f".lock-{key}").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if final.is_dir():
                    log.info("%s: another process fetched it into %s", resolved.pinned_uri, final)
                    return str(_cached_target(final, basename))
                for stale in parent.glob(f".partial-{key}-*"):  # left by a killed download
                    shutil.rmtree(stale, ignore_errors=True)
                partial = parent / f".partial-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                partial.mkdir()
                try:
                    started = time.monotonic()
                    got = Path(self._download(uri, partial))
                    if got.is_dir() and got != partial:
                        got.rename(final)
                        shutil.rmtree(partial, ignore_errors=True)
                        target = final
                    else:
                        partial.rename(final)
                        target = final / got.relative_to(partial)
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                log.info("%s: fetched %s into %s in %.1fs", resolved.pinned_uri,
                         redact(uri), final, time.monotonic() - started)
                return str(target)
        except RegistryError:
            raise
        except OSError as exc:
            raise RegistryError(f"{resolved.pinned_uri}: cannot fetch into {parent}: "
                                f"{exc.strerror or exc}") from None

    def _download(self, uri: str, destination: Path) -> str:
        """Download what ``uri`` names into ``destination``; the local path of the result."""
        _mlflow()
        from mlflow.artifacts import download_artifacts

        with self._errors(f"download {redact(uri)}"):
            return download_artifacts(artifact_uri=uri, dst_path=str(destination),
                                      tracking_uri=self.tracking_uri,
                                      registry_uri=self.registry_uri)


# ---- helpers ----------------------------------------------------------------------------


def _sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.absolute()}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    return Path(raw).absolute()


def redact(uri: str) -> str:
    """``uri`` without the password of ``user:password@host`` (URIs are shown in messages)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _probe(uri: str) -> None:
    """Fail fast, with a clear message, when an http(s) tracking server does not accept
    connections (MLflow's own client retries for minutes before giving up)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RegistryError(f"invalid tracking URI {redact(uri)!r}: bad port") from None
    host = parts.hostname
    if not host:
        raise RegistryError(f"invalid tracking URI {redact(uri)!r}: no host")
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(host):
        return  # reached through a proxy: connecting directly proves nothing
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RegistryError(f"cannot reach the MLflow tracking server at {redact(uri)}: "
                            f"{reason}") from None


def _aliases(model: Any) -> dict[str, str]:
    """A registered model's aliases as ``{alias: version}`` (MLflow gives a dict or a list)."""
    raw = getattr(model, "aliases", None) or {}
    if isinstance(raw, Mapping):
        return {str(a): str(v) for a, v in raw.items()}
    return {str(a.alias): str(a.version) for a in raw}


def _describe_aliases(aliases: Mapping[str, str]) -> str:
    if not aliases:
        return "it has no aliases"
    return "aliases: " + ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items()))


def _paged(search: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def _cached_target(final: Path, basename: str) -> Path:
    """The folder itself, or the single file in it when the version's artifact was one file."""
    inside = final / basename
    if basename and inside.is_file() and len(list(final.iterdir())) == 1:
        return inside
    return final


def _read_settings(folder: Path) -> dict[str, Any]:
    path = folder / "model-settings.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"register: cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"register: {path} must hold a mapping")
    for key in ("inputs", "outputs"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise RegistryError(f"register: {path}: {key} must be a list")
    return data


def _read_metrics(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"register: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"register: {path} must hold a JSON object")
    return data


def _numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers only, nested objects flattened with ``.``; NaN and infinities dropped (a tag
    reading ``nan`` helps nobody compare versions)."""
    found = {}
    for key, value in _flatten(metrics, keep=True).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            found[key] = float(value)
    return found


def _flatten(values: Mapping[str, Any], prefix: str = "", *, keep: bool = False) -> dict[str, Any]:
    """Nested mappings as ``a.b`` keys; other values as text (or kept as is with ``keep``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}.", keep=keep))
        elif keep:
            flat[name] = value
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat
