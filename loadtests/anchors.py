"""The anchors' own virtual environments, under ``loadtests/.anchors/`` (git-ignored).

MLServer 1.7.1, KServe 0.21.0, Ray Serve, LitServe, BentoML and NVIDIA PyTriton (a real Triton
server binary) are installed with pip into one venv each, so their pins never touch Turnout's.
The model frameworks are pinned to the versions of the harness's own environment, so every
server loads the very same artifacts. A venv is reused when its marker file records the same
requirement list; otherwise it is rebuilt.

    python -m loadtests.anchors install [mlserver kserve rayserve litserve bentoml pytriton]

PyTriton 0.7.0 pins numpy<2, which the frameworks here outgrew: it is installed with ``--no-deps``
beside its other requirements, and numpy 1.x goes into a folder of its own (``stub-numpy``) that
only Triton's Python backend stub puts first on its path (its pybind11 cannot read numpy 2
arrays: outputs arrive empty).
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
RAY_VERSION = "2.60.0"
LITSERVE_VERSION = "0.2.19"
BENTOML_VERSION = "1.4.40"
PYTRITON_VERSION = "0.7.0"
ALL = ("mlserver", "kserve", "rayserve", "litserve", "bentoml", "pytriton")
VERSIONS = {"mlserver": MLSERVER_VERSION, "kserve": KSERVE_VERSION, "rayserve": RAY_VERSION,
            "litserve": LITSERVE_VERSION, "bentoml": BENTOML_VERSION,
            "pytriton": PYTRITON_VERSION}
# nvidia-pytriton 0.7.0's requirements less numpy (installed with --no-deps, see above).
PYTRITON_DEPS = ["protobuf>=3.7.0", "pyzmq>=23.0", "sh>=1.14", "tritonclient[grpc,http]>=2.50",
                 "grpcio>=1.64.1", "typing_inspect>=0.6.0", "wrapt>=1.11.0", "psutil>=5.1",
                 "typing_extensions>=4.6.1", "importlib_metadata", "typer>=0.9.0"]


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
    if anchor == "rayserve":
        return [f"ray[serve]=={RAY_VERSION}", *_framework_pins("xgboost-cpu")]
    if anchor == "litserve":
        return [f"litserve=={LITSERVE_VERSION}", "pyzmq", *_framework_pins("xgboost-cpu")]
    if anchor == "bentoml":
        return [f"bentoml=={BENTOML_VERSION}", *_framework_pins("xgboost-cpu")]
    if anchor == "pytriton":
        return [*PYTRITON_DEPS, *_framework_pins("xgboost-cpu")]
    raise ValueError(f"unknown anchor {anchor!r}")


def venv_dir(anchor: str) -> Path:
    return ANCHORS_DIR / anchor


def stub_numpy_dir(anchor: str = "pytriton") -> Path:
    """Where numpy 1.x lies for Triton's Python backend stub (PYTHONPATH of the stub only)."""
    return venv_dir(anchor) / "stub-numpy"


def _install_steps(anchor: str, py: str, reqs: list[str]) -> list[list[str]]:
    pip = [py, "-m", "pip", "install", "-q"]
    steps = [[*pip, "--upgrade", "pip"], [*pip, *reqs]]
    if anchor == "rayserve":
        # tritonclient: KServe V2's generated gRPC service for Serve's gRPC proxy. It pins
        # protobuf<7, which Ray's grpc_reflection outgrew; its generated code runs on 7.
        steps += [[*pip, "tritonclient[grpc]"], [*pip, "protobuf>=7.35.1"]]
    if anchor == "pytriton":
        steps += [[*pip, "--no-deps", f"nvidia-pytriton=={PYTRITON_VERSION}"],
                  [*pip, "--target", str(stub_numpy_dir(anchor)), "numpy<2"]]
    return steps


# A .pth line (run by ``site`` in every interpreter of the venv) that puts numpy 1.x first only
# inside Triton's Python backend stub: its embedded interpreter ignores PYTHONPATH, and the
# venv's own processes keep numpy 2 for the frameworks.
STUB_PTH = ("import os, sys; os.path.basename(os.path.realpath('/proc/self/exe')) == "
            "'triton_python_backend_stub' and sys.path.insert(0, {path!r})\n")


def write_stub_pth(anchor: str = "pytriton") -> Path:
    site = next((venv_dir(anchor) / "lib").glob("python3*/site-packages"))
    pth = site / "turnout_bench_stub_numpy.pth"
    pth.write_text(STUB_PTH.format(path=str(stub_numpy_dir(anchor))))
    return pth


def python_of(anchor: str) -> Path:
    return venv_dir(anchor) / "bin" / "python"


def _marker(anchor: str) -> str:
    """A hash of everything installed, so a changed pin rebuilds the venv."""
    steps = [anchor, VERSIONS.get(anchor, ""), *requirements(anchor),
             *(" ".join(step[4:]) for step in _install_steps(anchor, "", [])[2:])]
    return hashlib.sha256("\n".join(steps).encode()).hexdigest()[:16]


def is_ready(anchor: str) -> bool:
    marker = venv_dir(anchor) / ".installed"
    return (python_of(anchor).exists() and marker.exists()
            and marker.read_text().strip() == _marker(anchor))


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
        for cmd in _install_steps(anchor, py, reqs):
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise RuntimeError(f"installing {anchor} failed; see {logfile}")
    if anchor == "pytriton":
        write_stub_pth(anchor)
    (target / ".installed").write_text(_marker(anchor) + "\n")
    return python_of(anchor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.anchors")
    parser.add_argument("action", choices=["install", "status"])
    parser.add_argument("anchors", nargs="*", default=list(ALL), choices=ALL)
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
