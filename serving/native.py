"""The request path compiled with mypyc, or the same modules as Python when the build is stale.

``scripts/install`` compiles the modules in :data:`MODULES` into extension modules next to
their sources (``.venv/bin/python scripts/build_native.py``): 13-19% fewer instructions per
request on the event loop (``python -m loadtests.loop_instructions``). An extension module
shadows its ``.py``, so an edited source would silently keep running the old compiled code:
the build records each source's hash in ``native.json``, and this guard, run when ``serving``
is first imported, loads every module of the list from its source when any of them changed
since the build, when the list changed, when no build exists, or when
``TURNOUT_PURE_PYTHON=1`` asks for it. All or none: compiled modules call each other's native
functions directly, so one stale module would still be reached compiled.

Never hold a weak reference to an instance of a compiled class that inherits a Python class
(the HTTP protocols, the HTTP/2 connection): mypyc's deallocator releases the weak-reference
slot as if it owned it (mypyc/mypyc#1102), and a weak reference that outlives its object is
freed twice (``tests/native_support.py`` finds such references).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

# the modules on every request's path over REST and gRPC, the model server's and the
# router's (router/__init__.py imports serving first, so this guard decides for both), leaves first
MODULES = (
    "serving.transport.h2grpc.frames",
    "serving.transport.h2grpc.headers",
    "serving.transport.h2grpc.connection",
    "serving.transport.h2grpc.calls",
    "serving.transport.coalesce",
    "serving.transport.bounded",
    "serving.transport.fastpath",
    "serving.protocol.templates",
    "serving.protocol.codec_v2",
    "serving.protocol.codec_grpc",
    "serving.server.metrics",
    "serving.server.validation",
    "serving.server.batching",
    "serving.server.dataplane",
    "serving.server.rest.infer",
    "serving.server.grpc.loop_engine",
    "router.balance",
    "router.forward",
    "router.h1client",
    "router.rest",
)
# the shared library mypyc builds for the group, beside this file
GROUP = "serving.native_group"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "native.json"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def extension_path(module: str) -> Path:
    return source_path(module).with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])


def source_hashes() -> dict[str, str]:
    return {module: hashlib.sha256(source_path(module).read_bytes()).hexdigest()
            for module in MODULES}


def why_pure(environ: Mapping[str, str] = os.environ) -> str:
    """Why the modules run as Python ("" when the build is current and complete)."""
    if environ.get("TURNOUT_PURE_PYTHON", "") not in ("", "0"):
        return "TURNOUT_PURE_PYTHON is set"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return "not compiled (run ./scripts/install)"
    built = set(manifest.get("sources", {}))
    if built != set(MODULES):
        return "the build's module list is not serving/native.py's (rebuild: " \
               ".venv/bin/python scripts/build_native.py)"
    if manifest.get("python") != sys.implementation.cache_tag:
        return f"compiled for {manifest.get('python')}, not {sys.implementation.cache_tag}"
    changed = [module for module, digest in source_hashes().items()
               if manifest.get("sources", {}).get(module) != digest]
    if changed:
        return (f"{len(changed)} source(s) changed since the build, e.g. {changed[0]} "
                "(rebuild: .venv/bin/python scripts/build_native.py)")
    missing = [module for module in MODULES if not extension_path(module).exists()]
    if missing:
        return f"{len(missing)} compiled module(s) missing, e.g. {missing[0]}"
    return ""


def built_modules() -> set[str]:
    """The modules the last build compiled (a list since shortened leaves extensions too)."""
    try:
        return set(json.loads(MANIFEST.read_text()).get("sources", {}))
    except (OSError, ValueError, AttributeError):
        return set()


class SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds ``modules``' ``.py`` files ahead of the compiled extensions beside them."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or not source_path(fullname).exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


REASON = why_pure()
if REASON:
    sys.meta_path.insert(0, SourcesFirst(set(MODULES) | built_modules()))


def compiled() -> list[str]:
    """The listed modules imported so far from their compiled extensions."""
    return [name for name in MODULES if name in sys.modules
            and str(getattr(sys.modules[name], "__file__", "")).endswith(".so")]


def state() -> str:
    """One line for the server's start-up log: what runs, compiled or not, and why."""
    if REASON:
        return f"request path runs as Python: {REASON}"
    return f"request path compiled with mypyc ({len(compiled())} of {len(MODULES)} modules loaded)"
