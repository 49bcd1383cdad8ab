"""The anchors' own virtual environments, under ``loadtests/.anchors/`` (git-ignored).

MLServer 1.7.1 and KServe 0.21.0 are installed with pip into one venv each, so their pins never
touch Turnout's. The model frameworks are pinned to the versions of the harness's own
environment, so every server loads the very same artifacts. A venv is reused when its marker
file records the same requirement list; otherwise it is rebuilt.

    python -m loadtests.anchors install [mlserver kserve]   # build or reuse, print the paths
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ANCHORS_DIR = ROOT / ".anchors"

MLSERVER_VERSION = "1.7.1"
KSERVE_VERSION = "0.21.0"


def _framework_pins(xgboost_dist: str) -> list[str]:
    """The model frameworks at this environment's versions, so artifacts load identically.

    ``xgboost_dist`` is the distribution to pin: mlserver-xgboost requires ``xgboost`` itself,
    elsewhere the CPU-only ``xgboost-cpu`` build avoids pulling in CUDA libraries.
    """
    pins = []
    for dist, name in (("scikit-learn", "scikit-learn"), ("xgboost-cpu", xgboost_dist),
                       ("xgboost", xgboost_dist), ("onnxruntime", "onnxruntime"),
                       ("joblib", "joblib")):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            continue
        if not any(p.startswith(name + "==") for p in pins):
            pins.append(f"{name}=={version}")
    return pins


def requirements(anchor: str) -> list[str]:
    if anchor == "mlserver":
        # MLServer 1.7.1 breaks with uvloop 0.22 (its loop-policy API moved).
        return [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}",
                f"mlserver-xgboost=={MLSERVER_VERSION}", "uvloop<0.22", *_framework_pins("xgboost")]
    if anchor == "kserve":
        return [f"kserve=={KSERVE_VERSION}", *_framework_pins("xgboost-cpu")]
    raise ValueError(f"unknown anchor {anchor!r}")


def venv_dir(anchor: str) -> Path:
    return ANCHORS_DIR / anchor


def python_of(anchor: str) -> Path:
    return venv_dir(anchor) / "bin" / "python"


def _marker(reqs: list[str]) -> str:
    return hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]


def is_ready(anchor: str) -> bool:
    marker = venv_dir(anchor) / ".installed"
    return (python_of(anchor).exists() and marker.exists()
            and marker.read_text().strip() == _marker(requirements(anchor)))


def ensure(anchor: str, log=print) -> Path:
    """Build (or reuse) the anchor's venv; returns its python. Raises on a failed install."""
    if is_ready(anchor):
        return python_of(anchor)
    reqs = requirements(anchor)
    target = venv_dir(anchor)
    if target.exists():
        shutil.rmtree(target)
    ANCHORS_DIR.mkdir(parents=True, exist_ok=True)
    log(f"[anchors] creating {target} with {' '.join(reqs)} (takes minutes)")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(target)], check=True)
    py = str(python_of(anchor))
    logfile = ANCHORS_DIR / f"{anchor}-install.log"
    with logfile.open("w") as out:
        for cmd in ([py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
                    [py, "-m", "pip", "install", "-q", *reqs]):
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise RuntimeError(f"installing {anchor} failed; see {logfile}")
    (target / ".installed").write_text(_marker(reqs) + "\n")
    return python_of(anchor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.anchors")
    parser.add_argument("action", choices=["install", "status"])
    parser.add_argument("anchors", nargs="*", default=["mlserver", "kserve"])
    args = parser.parse_args(argv)
    rc = 0
    for anchor in args.anchors:
        if args.action == "status":
            print(anchor, "ready" if is_ready(anchor) else "missing", venv_dir(anchor))
            continue
        try:
            print(anchor, ensure(anchor))
        except Exception as exc:  # report and go on with the other anchor
            print(f"{anchor}: {exc}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
