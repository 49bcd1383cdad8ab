"""Rollouts driven by the registry, end to end: ``turnout up`` serves ``models:/iris@champion``
from the embedded SQLite registry, and moving the alias starts a progressive canary of the new
version with the plane's analysis: a good model reaches 100%, one trained on shuffled labels is
caught by its disagreement with stable on mirrored traffic, one that errors by its error rate.
Each outcome is written back on the registry version as a tag.

Real training (upstream.training), the real MLflow registry, a real plane, router and model
servers; one plane for the module.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from tests.control.planes import PLUGINS, Up

pytestmark = pytest.mark.slow

ALIAS_URI = "models:/iris@champion"
ANALYSIS = {"minRequests": 5, "minAgreement": 0.8, "maxErrorRate": 0.05, "maxP99Ratio": None,
            "maxHolds": 30}
TURNOUT = {"mirror": {"percent": 100},
           "rollout": {"steps": [50, 100], "interval": "1s", "analysis": ANALYSIS}}


def manifest() -> dict:
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "iris"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                             "storageUri": ALIAS_URI}},
                     "turnout": TURNOUT}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry-plane")


@pytest.fixture(scope="module")
def registry(folder: Path):  # noqa: ANN201 - upstream's type
    from upstream.registry import Registry

    return Registry(state_dir=folder / ".turnout")


@pytest.fixture(scope="module")
def trained(folder: Path) -> dict[str, Path]:
    """Three versions' folders: a good one, a second good one, one that learnt nothing."""
    from upstream.training import train

    out = {}
    out["v1"] = train("sklearn", "iris", folder / "train-v1",
                      params={"estimator": "logistic_regression", "C": 1.0}).folder
    out["v2"] = train("sklearn", "iris", folder / "train-v2",
                      params={"estimator": "logistic_regression", "C": 10.0}).folder
    out["shuffled"] = train("sklearn", "iris", folder / "train-shuffled", shuffle_labels=True,
                            params={"estimator": "random_forest", "n_estimators": 5}).folder
    return out


@pytest.fixture(scope="module")
def plane(folder: Path, registry, trained: dict[str, Path]) -> Iterator[Up]:  # noqa: ANN001
    first = registry.register(trained["v1"], "iris", framework="sklearn", alias="champion")
    assert first.version == "1"
    up = Up(folder, manifest(), args=("--registry-poll", "1"))
    try:
        up.wait(lambda: up.infer() == 200, timeout=120, what="iris serving")
        yield up
    finally:
        assert up.stop() == 0, (folder / "up.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)[0][::3].astype(np.float32)


def served(plane: Up, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    answer = httpx.post(f"{plane.url}/v2/models/iris/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["outputs"][0]["data"])


def drive_until(plane: Up, rows: np.ndarray, phase_is: str, timeout: float = 120) -> dict:
    """Send single-row requests until the service's phase is ``phase_is``; the status then."""
    def reached() -> bool:
        with httpx.Client() as http:
            for row in rows[:20]:
                body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                    "data": row.tolist()}]}
                http.post(f"{plane.url}/v2/models/iris/infer", json=body, timeout=30)
        return plane.status("iris")["phase"] == phase_is

    plane.wait(reached, timeout=timeout, what=f"phase {phase_is}")
    return plane.status("iris")


def wait_for_canary(plane: Up, version: str) -> None:
    def started() -> bool:
        status = plane.status("iris")
        canary = next((v for v in status["variants"] if v["role"] == "canary"), None)
        return canary is not None and canary["registryVersion"] == f"models:/iris/{version}"
    plane.wait(started, timeout=60, what=f"canary of version {version}")


def tag(registry, version: str, key: str) -> str | None:  # noqa: ANN001
    found = next(v for v in registry.versions("iris") if v.version == version)
    return found.tags.get(key)


def test_the_alias_is_served_pinned_to_its_version(plane: Up, trained: dict[str, Path],
                                                   rows: np.ndarray) -> None:
    model = joblib.load(trained["v1"] / "model.joblib")
    np.testing.assert_array_equal(served(plane, rows), model.predict(rows))
    stable = plane.variant("stable", "iris")
    assert (stable["storageUri"], stable["registryVersion"]) == (ALIAS_URI, "models:/iris/1")
    replica = stable["endpoints"]["http"][0]
    assert httpx.get(f"{replica}/v2/models/iris").json()["versions"] == ["1"]


def test_moving_the_alias_to_a_good_version_rolls_it_out_to_all_traffic(
        plane: Up, registry, trained: dict[str, Path], rows: np.ndarray) -> None:  # noqa: ANN001
    v2 = registry.register(trained["v2"], "iris", framework="sklearn")
    registry.set_alias("iris", "champion", v2.version)
    wait_for_canary(plane, v2.version)            # noticed by polling, no apply
    status = drive_until(plane, rows, "stable")
    assert status["variants"][0]["registryVersion"] == f"models:/iris/{v2.version}"
    assert any(e["kind"] == "promoted" for e in status["events"])
    model = joblib.load(trained["v2"] / "model.joblib")
    np.testing.assert_array_equal(served(plane, rows), model.predict(rows))
    plane.wait(lambda: tag(registry, v2.version, "turnout.rollout") == "promoted",
               timeout=30, what="promotion tag")
    assert tag(registry, v2.version, "turnout.rollout.service") == "iris"


def test_a_version_trained_on_shuffled_labels_is_rolled_back_by_disagreement(
        plane: Up, registry, trained: dict[str, Path], rows: np.ndarray) -> None:  # noqa: ANN001
    bad = registry.register(trained["shuffled"], "iris", framework="sklearn")
    registry.set_alias("iris", "champion", bad.version)
    plane.cli("rollout", "refresh", "iris")       # explicit, without waiting for the poll
    wait_for_canary(plane, bad.version)
    status = drive_until(plane, rows, "rolled-back")
    rolled = next(e for e in reversed(status["events"]) if e["kind"] == "rolled_back")
    assert "agrees with stable" in rolled["message"]
    plane.wait(lambda: tag(registry, bad.version, "turnout.rollout") == "rolled-back",
               timeout=30, what="rollback tag")
    assert "agrees with stable" in tag(registry, bad.version, "turnout.rollout.reason")
    # The alias still names the bad version: the plane does not start it again.
    assert "nothing to do" in plane.cli("rollout", "refresh", "iris")
    assert plane.status("iris")["phase"] == "rolled-back"


def test_a_version_that_errors_is_rolled_back_by_its_error_rate(
        plane: Up, registry, folder: Path, trained: dict[str, Path],
        rows: np.ndarray) -> None:  # noqa: ANN001
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    # A real sklearn pipeline whose feature step raises on every real row (it is importable
    # by the replicas: the plane's processes have tests/control/plugins on their path).
    sys.path.insert(0, str(PLUGINS))
    from turnout_control_runtimes import fail_on_real_rows

    broken = folder / "broken"
    shutil.copytree(trained["v2"], broken)
    model = joblib.load(broken / "model.joblib")
    raises = FunctionTransformer(fail_on_real_rows, validate=True).fit(np.zeros((2, 4)))
    joblib.dump(make_pipeline(raises, model), broken / "model.joblib")
    (broken / "onnx").exists() and shutil.rmtree(broken / "onnx")
    erroring = registry.register(broken, "iris", framework="sklearn")
    registry.set_alias("iris", "champion", erroring.version)
    wait_for_canary(plane, erroring.version)
    status = drive_until(plane, rows, "rolled-back")
    rolled = next(e for e in reversed(status["events"]) if e["kind"] == "rolled_back")
    assert "error rate" in rolled["message"]
    plane.wait(lambda: tag(registry, erroring.version, "turnout.rollout") == "rolled-back",
               timeout=30, what="rollback tag")


def test_an_unknown_alias_is_refused_at_apply_and_nothing_changes(plane: Up) -> None:
    doc = manifest()
    doc["spec"]["predictor"]["model"]["storageUri"] = "models:/iris@nobody"
    before = plane.status("iris")
    error = plane.cli_fails("apply", "-f", plane.write("unknown.yaml", doc))
    assert "models:/iris@nobody" in error and "nobody" in error
    after = plane.status("iris")
    assert (after["stable"], after["canary"], after["phase"]) == \
        (before["stable"], before["canary"], before["phase"])
