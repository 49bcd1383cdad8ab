"""The request path compiled with mypyc by ``scripts/install``, and the guard that runs the same
modules as Python when the build is stale: an edited source never runs as its old compiled
self (serving/native.py). Real builds, real interpreters started from copies of the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import native

PROBE = """
import importlib, json, sys
from serving import native
loaded = {name: importlib.import_module(name).__file__ for name in native.MODULES}
print(json.dumps({"files": loaded, "reason": native.REASON, "state": native.state(),
                  "marker": hasattr(sys.modules["serving.server.validation"], "EDITED")}))
"""


def probe(*, pythonpath: Path | None = None, **env: str) -> dict:
    """Import every listed module in a fresh interpreter: where each came from, and why."""
    environ = {k: v for k, v in os.environ.items() if k != "TURNOUT_PURE_PYTHON"}
    environ.update(env)
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True,
                         text=True, timeout=120, cwd=pythonpath or Path.cwd(), check=True)
    return json.loads(out.stdout)


def test_the_install_compiles_the_whole_request_path() -> None:
    # what scripts/install leaves: every module of the list loaded from its extension
    found = probe()
    assert found["reason"] == "", (
        f"{found['reason']}: run ./scripts/install (or .venv/bin/python scripts/build_native.py)")
    assert all(path.endswith(native.extension_path(name).name)
               for name, path in found["files"].items()), found["files"]
    assert found["state"] == (f"request path compiled with mypyc ({len(native.MODULES)} of "
                              f"{len(native.MODULES)} modules loaded)")


def test_pure_python_on_request() -> None:
    found = probe(TURNOUT_PURE_PYTHON="1")
    assert all(path.endswith(".py") for path in found["files"].values()), found["files"]
    assert found["state"] == "request path runs as Python: TURNOUT_PURE_PYTHON is set"


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serving and router packages with their build, copied: sources can be edited there."""
    if native.why_pure({}):
        pytest.fail(f"no current build to copy: {native.why_pure({})}")
    root = tmp_path_factory.mktemp("native")
    for package in ("serving", "router"):
        shutil.copytree(native.PACKAGE_DIR.parent / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    return root


def test_a_copy_of_the_build_runs_compiled(package_copy: Path) -> None:
    found = probe(pythonpath=package_copy)
    assert found["reason"] == ""
    assert all(path.startswith(str(package_copy)) and path.endswith(".so")
               for path in found["files"].values()), found["files"]


def test_an_edited_source_runs_as_python_with_all_the_others(package_copy: Path,
                                                              tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(package_copy, edited)
    source = edited / "serving" / "server" / "validation.py"
    source.write_text(source.read_text() + "\nEDITED = True\n")
    found = probe(pythonpath=edited)
    # the edit runs, and every other module of the list with it (they call each other natively)
    assert found["marker"] is True
    assert all(path.startswith(str(edited)) and path.endswith(".py")
               for path in found["files"].values()), found["files"]
    assert "1 source(s) changed since the build, e.g. serving.server.validation" in found["reason"]
    assert "build_native.py" in found["reason"]


def test_a_missing_extension_or_manifest_runs_as_python(package_copy: Path,
                                                        tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    shutil.copytree(package_copy, gone)
    native_file = native.extension_path("serving.server.batching").relative_to(native.PACKAGE_DIR)
    (gone / "serving" / native_file).unlink()
    found = probe(pythonpath=gone)
    assert "compiled module(s) missing, e.g. serving.server.batching" in found["reason"]
    assert all(path.endswith(".py") for path in found["files"].values())
    (gone / "serving" / "native.json").unlink()
    assert probe(pythonpath=gone)["reason"] == "not compiled (run ./scripts/install)"


def test_a_build_for_another_interpreter_runs_as_python(package_copy: Path,
                                                        tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(package_copy, other)
    manifest = other / "serving" / "native.json"
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "python": "cpython-399"}))
    found = probe(pythonpath=other)
    assert found["reason"] == f"compiled for cpython-399, not {sys.implementation.cache_tag}"
    assert all(path.endswith(".py") for path in found["files"].values())


def test_a_module_dropped_from_the_list_runs_as_python_until_rebuilt(package_copy: Path,
                                                                     tmp_path: Path) -> None:
    # the list shrank since the build: the dropped module's extension is still there, and
    # would shadow its source
    shrunk = tmp_path / "shrunk"
    shutil.copytree(package_copy, shrunk)
    listing = shrunk / "serving" / "native.py"
    text = listing.read_text()
    assert '    "serving.server.rest.infer",\n' in text
    listing.write_text(text.replace('    "serving.server.rest.infer",\n', ""))
    assert (shrunk / "serving" / "server" / "rest" /
            native.extension_path("serving.server.rest.infer").name).exists()
    out = subprocess.run(
        [sys.executable, "-c", "import json, serving.server.rest.infer as m; from serving import "
         "native; print(json.dumps([m.__file__, native.REASON]))"],
        env={**{k: v for k, v in os.environ.items() if k != "TURNOUT_PURE_PYTHON"},
             "PYTHONPATH": str(shrunk)}, cwd=shrunk, capture_output=True,
        text=True, timeout=120, check=True)
    file, reason = json.loads(out.stdout)
    assert file.endswith("infer.py") and file.startswith(str(shrunk))
    assert "module list" in reason



def test_clean_removes_an_extension_no_list_names(package_copy: Path, tmp_path: Path) -> None:
    # an extension a build on another branch left (its list and manifest are gone from this
    # tree): it would shadow its source unseen, so --clean sweeps it with the listed ones
    tree = tmp_path / "tree"
    shutil.copytree(package_copy, tree)
    (tree / "scripts").mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "scripts" / "build_native.py",
                tree / "scripts")
    stray = tree / "router" / native.extension_path("serving.x").name.replace("x.", "graph.", 1)
    stray.write_bytes(b"")
    listed = tree / "serving" / native.extension_path("serving.server.batching").relative_to(
        native.PACKAGE_DIR)
    assert stray.exists() and listed.exists() and (tree / "router" / "graph.py").exists()
    subprocess.run([sys.executable, "scripts/build_native.py", "--clean"], cwd=tree,
                   capture_output=True, timeout=120, check=True)
    assert not stray.exists() and not listed.exists()
    assert not (tree / "serving" / "native.json").exists()
    assert (tree / "router" / "graph.py").exists()  # sources stay
