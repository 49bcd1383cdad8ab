"""Model storage URIs: local paths, ``file://``, ``http(s)://``, ``s3://``, ``gs://`` and any
other fsspec filesystem, fetched into a local cache that survives restarts.

A remote model is listed first (sizes and the ETag / checksum / modification time the store
reports), and the cache entry is keyed by the URI and that listing, so a changed object is
fetched again and an unchanged one is reused without a download. Files are downloaded into a
``.partial-*`` folder beside the entry and renamed into place only when every file arrived
whole, so an interrupted download is never served: the next attempt starts over.

Credentials come from where each filesystem normally finds them (``AWS_*`` variables, profiles,
instance metadata; ``GOOGLE_APPLICATION_CREDENTIALS``) or from ``storage_options`` in the model
settings, which are passed to the filesystem as they are.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from serving.protocol.errors import ModelLoadError
from serving.runtime.cache import default_cache_dir

log = logging.getLogger("turnout.storage")

PROGRESS_MIN_BYTES = 16 * 1024 * 1024  # smaller files download without progress reports
# What a store may report about an object's content, most specific first.
_IDENTITY_FIELDS = ("ETag", "etag", "Content-MD5", "Digest", "md5Hash", "md5", "crc32c",
                    "checksum", "LastModified", "Last-Modified", "last_modified", "updated",
                    "mtime", "modified")

Progress = Callable[[str, int, int], None]  # (file, bytes done, total bytes)
Listing = dict[str, tuple[str, int | None, str]]  # relative path -> (remote, size, identity)


class StorageError(ModelLoadError):
    """A storage URI that cannot be read: wrong address, missing object, no credentials."""


# Formats that run code when loaded (joblib and pickle files unpickle): from a remote URI they
# load only where the operator trusts the source (--trusted-source PREFIX, or "*").
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


class UntrustedSource(StorageError):
    """A pickle from a remote URI nobody said to trust."""


def check_trusted(uri: str, artifact: Path, trusted: list[str] | tuple[str, ...]) -> None:
    """Refuse ``artifact`` fetched from a remote ``uri`` when it is a pickle and no prefix in
    ``trusted`` (``"*"``: any) covers the URI: unpickling runs whatever the file says."""
    if not is_remote(uri) or "*" in trusted or any(uri.startswith(p) for p in trusted):
        return
    files = [artifact] if artifact.is_file() else \
        [f for f in artifact.rglob("*") if f.is_file()] if artifact.is_dir() else []
    pickles = sorted(f.name for f in files if f.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UntrustedSource(
            f"storage_uri {uri!r}: refusing to load {', '.join(pickles)}: pickle files run code "
            "when loaded, and this source is not trusted; allow it with --trusted-source "
            "PREFIX (or --trust-remote-pickle), or serve a format that runs no code (ONNX, "
            "XGBoost JSON/UBJ, LightGBM text)")


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a filesystem other than this machine's (Windows drives aside)."""
    scheme = urlsplit(uri).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(uri: str, *, base: Path | None = None) -> Path:
    """The path a local ``uri`` (plain path or ``file://``) names, relative ones to ``base``."""
    path = Path(unquote(uri[len("file://"):])) if uri.startswith("file://") else Path(uri)
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


_PIN = "sha256="


def split_pin(uri: str) -> tuple[str, str | None]:
    """``URI#sha256=HEX`` -> (URI, hex digest); a URI without a pin -> (URI, None).

    The pin rides in the URI's fragment so every place that takes a storage URI (``turnout
    serve``, a manifest's ``storageUri``, ``storage_uri`` in model settings) can carry it; the
    fragment never reaches the store.
    """
    head, sep, fragment = uri.partition("#")
    if not sep or not fragment.startswith(_PIN):
        return uri, None
    digest = fragment[len(_PIN):].lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise StorageError(f"storage_uri {uri[:200]!r}: sha256= must be 64 hex digits")
    return head, digest


def verify_pin(uri: str, path: Path, digest: str) -> None:
    """Refuse ``path`` unless it is one file whose SHA-256 is ``digest``."""
    if not path.is_file():
        raise StorageError(f"storage_uri {uri!r}: a sha256 pin names one file, but the URI "
                           "names a folder")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != digest:
        raise StorageError(f"storage_uri {uri!r}: sha256 {h.hexdigest()} is not the pinned "
                           f"{digest}; refusing to load it")


def fetch(uri: str, *, options: dict[str, Any] | None = None, base: Path | None = None,
          cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """A local path holding what ``uri`` names: itself if local, else the cached copy.

    The result is a file when the URI names one object, a folder when it names a prefix or
    directory. With a ``#sha256=HEX`` pin the file's digest is checked on every fetch (cached
    copies included) and a mismatch refused. Raises :class:`StorageError` with the URI and the
    reason.
    """
    uri, digest = split_pin(uri)
    path = _fetch(uri, options=options, base=base, cache_dir=cache_dir, progress=progress)
    if digest is not None:
        verify_pin(uri, path, digest)
    return path


def _fetch(uri: str, *, options: dict[str, Any] | None, base: Path | None,
           cache_dir: Path | None, progress: Progress | None) -> Path:
    if not is_remote(uri):
        path = local_path(uri, base=base)
        if not path.exists():
            raise StorageError(f"storage_uri {uri!r}: {path} does not exist")
        return path
    fs, root = _filesystem(uri, options or {})
    listing, is_dir = _list(fs, root, uri)
    cache = cache_dir or default_cache_dir()
    key = _cache_key(uri, listing)
    final = cache / key
    target = final if is_dir else final / next(iter(listing))
    if final.is_dir():
        log.info("%s: using the cached copy in %s", uri, final)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Replicas of one revision start together: one downloads, the others wait and reuse it.
    lock_path = cache / f".lock-{key}"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_dir():
                log.info("%s: another process fetched it; using the cached copy in %s", uri,
                         final)
                return target
            _download(uri, fs, listing, cache, key, final, progress)
        finally:
            lock_path.unlink(missing_ok=True)  # waiters hold it open; they find ``final``
    return target


def _download(uri: str, fs: Any, listing: Listing, cache: Path, key: str, final: Path,
              progress: Progress | None) -> None:
    _remove_abandoned(cache, key)
    partial = cache / f".partial-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    started = time.monotonic()
    try:
        for relative, (remote, size, _) in listing.items():
            local = partial / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            callback = _callback(relative, size, progress)
            fs.get_file(remote, str(local), callback=callback)
            got = local.stat().st_size
            if size is not None and got != size:
                raise StorageError(f"storage_uri {uri!r}: download of {relative} stopped at "
                                   f"{got} of {size} bytes")
        (partial / ".turnout-source.json").write_text(json.dumps({"uri": uri}))
        try:
            partial.rename(final)
        except OSError:
            if not final.is_dir():  # not another process finishing the same download first
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except StorageError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        raise StorageError(f"storage_uri {uri!r}: download failed: "
                           f"{type(exc).__name__}: {exc}") from exc
    total = sum(size or 0 for _, size, _ in listing.values())
    log.info("%s: fetched %d file(s), %.1f MiB in %.1fs into %s", uri, len(listing),
             total / 2**20, time.monotonic() - started, final)


def _filesystem(uri: str, options: dict[str, Any]) -> tuple[Any, str]:
    scheme = urlsplit(uri).scheme
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"storage_uri {uri!r}: remote storage needs fsspec; install "
                           "turnout[storage] (and turnout[s3] or turnout[gcs])") from None
    try:
        fs, root = fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme, "storage")
        raise StorageError(f"storage_uri {uri!r}: {scheme}:// needs a package that is not "
                           f"installed ({exc}); install turnout[{extra}]") from None
    except ValueError as exc:
        raise StorageError(f"storage_uri {uri!r}: {exc}") from None
    return fs, root


def _list(fs: Any, root: str, uri: str) -> tuple[Listing, bool]:
    """Every file under ``root`` as relative path -> (remote path, size), and whether the
    URI names a folder. HTTP URLs ending in ``/`` are folders (their index page's links)."""
    try:
        if _is_http(fs):
            is_dir = uri.endswith("/")
            infos = ({p: fs.info(p) for p in fs.find(root)} if is_dir else {root: fs.info(root)})
        else:
            info = fs.info(root)
            is_dir = info.get("type") == "directory"
            infos = ({p: i for p, i in fs.find(root, detail=True).items()
                      if i.get("type") != "directory"} if is_dir else {root: info})
    except FileNotFoundError:
        raise StorageError(f"storage_uri {uri!r} does not exist") from None
    except Exception as exc:
        raise StorageError(_describe(uri, exc)) from None
    if not infos:
        raise StorageError(f"storage_uri {uri!r} is an empty folder")
    listing: Listing = {}
    strip = root.rstrip("/")
    for path, info in sorted(infos.items()):
        name = info.get("name", path)
        relative = (str(name)[len(strip):].lstrip("/") if is_dir
                    else Path(urlsplit(str(name)).path).name)
        if not relative or ".." in Path(relative).parts:
            continue
        size = info.get("size")
        listing[relative] = (path, int(size) if size is not None else None, _identity(info))
    if not listing:
        raise StorageError(f"storage_uri {uri!r}: no files to fetch")
    return listing, is_dir


def _identity(info: dict[str, Any]) -> str:
    for field in _IDENTITY_FIELDS:
        value = info.get(field)
        if value:
            return f"{field}={value}"
    return ""


def _cache_key(uri: str, listing: Listing) -> str:
    content = json.dumps([(rel, size, identity)
                          for rel, (_, size, identity) in sorted(listing.items())])
    name = Path(urlsplit(uri).path.rstrip("/")).name or "model"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
    return (f"{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}-"
            f"{hashlib.sha256(content.encode()).hexdigest()[:12]}")


def _is_http(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"http", "https"} & set(protocol))


def _describe(uri: str, exc: Exception) -> str:
    kind = type(exc).__name__
    text = str(exc) or kind
    hint = ""
    if kind in ("NoCredentialsError", "PartialCredentialsError") or "credential" in text.lower():
        hint = " (no credentials found: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a " \
               "profile, or storage_options in model-settings.yaml)"
    elif isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        hint = " (access denied: check the credentials and the bucket policy)"
    return f"storage_uri {uri!r}: cannot read it: {kind}: {text}{hint}"


def _remove_abandoned(cache: Path, key: str) -> None:
    """Partial downloads of this entry left by processes that no longer run."""
    for partial in cache.glob(f".partial-{key}-*"):
        try:
            pid = int(partial.name[len(f".partial-{key}-"):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _callback(name: str, size: int | None, progress: Progress | None) -> Any:
    from fsspec.callbacks import Callback

    report = progress or _log_progress
    if size is not None and size < PROGRESS_MIN_BYTES:
        return Callback()  # nothing to report for small files

    class _Report(Callback):
        def call(self, *args: Any, **kwargs: Any) -> None:
            report(name, int(self.value), int(self.size or size or 0))

    return _Report(size=size)


_logged: dict[str, int] = {}


def _log_progress(name: str, done: int, total: int) -> None:
    """Server logs get a line at each quarter of a large file."""
    if not total:
        return
    quarter = min(4, done * 4 // total)
    if _logged.get(name, -1) < quarter:
        _logged[name] = quarter
        log.info("downloading %s: %d%% of %.1f MiB", name, quarter * 25, total / 2**20)
        if quarter == 4:
            _logged.pop(name, None)


def terminal_progress(stream: Any = None) -> Progress | None:
    """For the CLI: bytes progress bars on ``stream`` (stderr) when it is a terminal; None
    otherwise, so pipes and logs get the quarter lines of the log instead."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return _Bars(stream) if tty else None


class _Bars:
    """One rich progress bar per file of a fetch; rich is imported on the first report only,
    so nothing on a server's path loads it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        self._done: set[str] = set()

    def __call__(self, name: str, done: int, total: int) -> None:
        if name in self._done:  # fsspec may report a finished file once more
            return
        if self._bars is None:
            from rich import progress as rp
            from rich.console import Console

            self._bars = rp.Progress(rp.TextColumn("downloading {task.description}"),
                                     rp.BarColumn(), rp.DownloadColumn(),
                                     rp.TransferSpeedColumn(), rp.TimeRemainingColumn(),
                                     console=Console(file=self.stream))
            self._bars.start()
        task = self._tasks.get(name)
        if task is None:
            task = self._tasks[name] = self._bars.add_task(name, total=total or None)
        self._bars.update(task, completed=done, total=total or None)
        if total and done >= total:
            self._done.add(name)
        if all(t.finished for t in self._bars.tasks):
            self._bars.stop()
            self._bars, self._tasks = None, {}
