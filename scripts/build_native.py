"""Compile the request path (``serving.native.MODULES``) with mypyc, in place, and record the
sources it was built from in ``serving/native.json``.

Run by ``scripts/install`` (it does nothing when the build is current); run it again after
editing one of the modules (until then they run as Python: see serving/native.py). A failed
build leaves no extension behind and says why; the server then runs the same modules as Python.
``--clean`` only removes what a build left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["TURNOUT_PURE_PYTHON"] = "1"  # importing serving must not load what we rebuild

from serving import native  # noqa: E402


def built_files() -> list[Path]:
    """Every extension a build left in the tree: this list's, the last build's, and any other
    beside a source in the listed packages (left by a build on another branch, whose list and
    manifest this tree no longer has: it would shadow its source unseen)."""
    group = native.PACKAGE_DIR / f"{native.GROUP.rsplit('.', 1)[1]}__mypyc"
    found = set(native.PACKAGE_DIR.glob(f"{group.name}.*.so"))
    for module in set(native.MODULES) | native.built_modules():
        source = native.source_path(module)
        found.update(source.parent.glob(f"{source.stem}.*.so"))
    for package in {module.split(".")[0] for module in native.MODULES}:
        for extension in (ROOT / package).rglob("*.so"):
            if extension.with_name(extension.name.split(".")[0] + ".py").exists():
                found.add(extension)
    return sorted(found)


def clean() -> None:
    for path in built_files():
        path.unlink()
    native.MANIFEST.unlink(missing_ok=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    hashes = native.source_hashes()  # before compiling: an edit meanwhile reads as stale
    os.chdir(ROOT)  # mypyc names modules by their paths from here
    modules = mypycify([str(native.source_path(m).relative_to(ROOT)) for m in native.MODULES],
                       opt_level="3", group_name=native.GROUP, multi_file=True,
                       target_dir=str(ROOT / "build" / "mypyc"))
    # the group's header lands beside its package's path under the target folder, which the
    # one-file-per-module sources include by bare name
    group_dir = ROOT / "build" / "mypyc" / Path(*native.GROUP.split(".")[:-1])
    for extension in modules:
        extension.include_dirs.append(str(group_dir))
    setup(name="turnout-native", ext_modules=modules, script_args=[
        "--quiet", "build_ext", "--inplace", "--parallel", str(os.cpu_count() or 1),
        "--build-temp", str(ROOT / "build" / "native")])
    native.MANIFEST.write_text(json.dumps({"python": sys.implementation.cache_tag,
                                           "sources": hashes}, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    if not (args.clean or args.force or native.why_pure({})):
        print("build_native: the compiled request path is up to date", file=sys.stderr)
        return 0
    clean()
    if args.clean:
        return 0
    started = time.monotonic()
    try:
        build()
    except (SystemExit, Exception) as exc:  # any failure (no mypy, no compiler): run as Python
        clean()
        print(f"build_native: not compiled, the request path runs as Python: {exc!r}",
              file=sys.stderr)
        return 1
    print(f"build_native: {len(native.MODULES)} modules compiled with mypyc in "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
