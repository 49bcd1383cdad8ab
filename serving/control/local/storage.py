"""Local storage URIs: ``file://`` URLs and plain paths, relative ones to the manifest's folder.

Cloud schemes (``gs://``, ``s3://``, ``pvc://``, ``https://``) are refused with a clear error
rather than half-supported: ``turnout up`` serves what is on this machine.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse


class StorageError(ValueError):
    pass


def local_path(uri: str, *, base: Path) -> Path:
    """The local path ``uri`` names; ``file://models/x`` and ``models/x`` are relative to ``base``."""
    if uri.startswith("file://"):
        rest = unquote(uri[len("file://"):])
        path = Path(rest)
    elif urlparse(uri).scheme and len(urlparse(uri).scheme) > 1:  # not a Windows drive letter
        raise StorageError(f"storageUri {uri!r}: only file:// and local paths are served "
                           "locally; copy the model here and point at it")
    else:
        path = Path(uri)
    return path if path.is_absolute() else (base / path).resolve()
