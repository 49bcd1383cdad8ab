"""Fixtures of the control plane's end-to-end tests: real model folders and planes to stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.control.planes import Up


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    root = tmp_path_factory.mktemp("models")
    x, y = load_iris(return_X_y=True)
    # "shifted" is a real model that learnt the wrong labels: it disagrees with v1 on most rows,
    # as a canary with a label-mapping bug would.
    for name, model, labels in (
            ("v1", DecisionTreeClassifier(max_depth=3, random_state=0), y),
            ("v2", LogisticRegression(max_iter=500), y),
            ("shifted", LogisticRegression(max_iter=500), (y + 1) % 3)):
        (root / name).mkdir()
        joblib.dump(model.fit(x, labels), root / name / "model.joblib")
    (root / "flaky").mkdir()
    (root / "flaky" / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": "turnout_control_runtimes:Flaky", "parameters": {"fail_ratio": 0.5},
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 4]}]}))
    (root / "slow").mkdir()
    (root / "slow" / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": "turnout_control_runtimes:Slow", "parameters": {"delay": 0.2},
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 4]}]}))
    return root


@pytest.fixture
def up(tmp_path: Path) -> Iterator[list[Up]]:
    planes: list[Up] = []
    yield planes
    for plane in planes:
        assert plane.stop() == 0, (plane.folder / "up.log").read_text()[-3000:]
