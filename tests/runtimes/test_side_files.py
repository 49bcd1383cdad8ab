"""Files that sit beside a model (training metrics, MLflow input examples) are never taken for
its artifact, though XGBoost's runtime serves ``.json`` files."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from serving.runtime.base import detect_runtime, find_artifact
from serving.server.repository import discover

SIDE = ("metrics.json", "input_example.json", "serving_input_example.json")


@pytest.fixture
def xgb_folder(tmp_path: Path) -> Path:
    import xgboost as xgb

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(x, (x[:, 0] > 0).astype(int))
    model.save_model(tmp_path / "model.json")
    for name in SIDE:
        (tmp_path / name).write_text('{"accuracy": 1.0}')
    return tmp_path


def test_an_xgboost_folder_with_metrics_json_is_one_xgboost_model(xgb_folder: Path) -> None:
    assert detect_runtime(xgb_folder) == "xgboost"
    assert find_artifact(xgb_folder, (".json", ".ubj", ".bst")).name == "model.json"
    [source] = discover(xgb_folder, name="m")
    assert source.versions == {"1": xgb_folder}


def test_a_sklearn_folder_with_metrics_json_is_served_by_sklearn(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(20, 2))
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0), tmp_path / "model.joblib")
    (tmp_path / "metrics.json").write_text("{}")
    assert detect_runtime(tmp_path) == "sklearn"


def test_a_folder_with_only_side_files_has_no_artifact(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(Exception, match="cannot tell the runtime"):
        detect_runtime(tmp_path)
