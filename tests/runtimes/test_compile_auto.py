"""Verified compilation is the default (``compile: auto``): with no model settings, linear
scikit-learn models and XGBoost boosters are served by their verified ONNX copy; anything that
cannot be compiled exactly is served by its framework after one INFO line.

Tolerances (the ones the verifier applies): labels exactly; scikit-learn probabilities and
regression values 1e-9 relative; XGBoost 1e-5 relative / 1e-6 absolute.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import xgboost as xgb
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from runtimes.sklearn import SklearnRuntime
from runtimes.xgboost import XGBoostRuntime
from serving.runtime.settings import ModelSettings

RNG = np.random.default_rng(11)
X = RNG.normal(size=(300, 4))
LABELS = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
ROWS = RNG.normal(scale=2.0, size=(50, 4))
LOGGER = "turnout.runtimes.compiled"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TURNOUT_MODEL_CACHE", raising=False)
    return tmp_path / "cache" / "turnout" / "compiled"


def sklearn_model(model: object, folder: Path) -> SklearnRuntime:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=folder / "model.joblib"))
    runtime.load()
    return runtime


def test_no_settings_serve_the_verified_copy_with_one_info_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = sklearn_model(model, tmp_path / "a")
    assert runtime._compiled is not None
    got = runtime.predict({"input-0": ROWS}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(got["predict"], model.predict(ROWS))
    np.testing.assert_allclose(got["predict_proba"], model.predict_proba(ROWS), rtol=1e-9, atol=0)
    lines = [r for r in caplog.records if "compiled to ONNX by skl2onnx" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "(LogisticRegression): verified on 1025 rows, labels equal" in lines[0].getMessage()


def test_a_warm_start_loads_the_cached_copy_without_converting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    started = time.perf_counter()
    sklearn_model(model, tmp_path / "b")
    cold = time.perf_counter() - started
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=tmp_path / "b" / "model.joblib"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        started = time.perf_counter()
        runtime.load()
        warm = time.perf_counter() - started
    assert runtime._compiled is not None
    assert "serving the verified ONNX compilation" in caplog.text
    assert "compiled to ONNX by" not in caplog.text
    assert warm < max(cold, 0.05)  # no conversion, no verification: a session open
    np.testing.assert_array_equal(runtime.predict({"input-0": ROWS}, ["predict"])["predict"],
                                  model.predict(ROWS))


def test_an_unsupported_estimator_is_served_by_scikit_learn_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, private_cache: Path) -> None:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, LABELS)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = sklearn_model(model, tmp_path / "c")
    assert runtime._compiled is None and not private_cache.exists()
    np.testing.assert_array_equal(runtime.predict({"input-0": ROWS}, ["predict"])["predict"],
                                  model.predict(ROWS))
    [line] = [r for r in caplog.records if "not compiled to ONNX" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert "(compile: auto), served by scikit-learn: RandomForestClassifier is not" in \
        line.getMessage()


def test_a_copy_that_fails_verification_is_not_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        private_cache: Path) -> None:
    import skl2onnx

    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    wrong = LogisticRegression(max_iter=500).fit(X, 2 - LABELS)
    real = skl2onnx.to_onnx
    # The converter hands back another model's graph: the verifier must catch it.
    monkeypatch.setattr(skl2onnx, "to_onnx", lambda _m, x, options=None, **k: real(
        wrong, x, options={id(wrong): {"zipmap": False}}, **k))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = sklearn_model(model, tmp_path / "d")
    assert runtime._compiled is None and not any(private_cache.glob("*/meta.json"))
    np.testing.assert_array_equal(runtime.predict({"input-0": ROWS}, ["predict"])["predict"],
                                  model.predict(ROWS))
    [line] = [r for r in caplog.records if "not compiled to ONNX" in r.getMessage()]
    assert "differs from the model: predict labels differ on" in line.getMessage()


def test_without_the_converter_auto_quietly_falls_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # a lean install: import fails
    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = sklearn_model(model, tmp_path / "e")
    assert runtime._compiled is None
    [line] = [r for r in caplog.records if r.name == LOGGER]
    assert line.levelno == logging.INFO and "skl2onnx is not installed" in line.getMessage()


def test_compile_none_is_respected(tmp_path: Path, private_cache: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    joblib.dump(LogisticRegression(max_iter=500).fit(X, LABELS), folder / "model.joblib")
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=folder / "model.joblib",
                                           parameters={"compile": "none"}))
    runtime.load()
    assert runtime._compiled is None and not private_cache.exists()


def test_an_xgboost_booster_with_no_settings_predicts_what_xgboost_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 4},
                        xgb.DMatrix(X, label=LABELS), num_boost_round=20)
    booster.save_model(str(tmp_path / "model.json"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        runtime = XGBoostRuntime(ModelSettings(name="m", artifact=tmp_path / "model.json"))
        runtime.load()
    assert runtime._compiled is not None
    assert "compiled to ONNX by onnxmltools (multi:softprob)" in caplog.text
    rows = ROWS.astype(np.float32)
    got = runtime.predict({"input-0": rows}, ["predict", "predict_proba"])
    proba = booster.predict(xgb.DMatrix(rows))
    np.testing.assert_allclose(got["predict_proba"], proba, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["predict"], proba.argmax(axis=1))


@pytest.mark.slow
def test_a_server_with_no_settings_answers_like_the_frameworks(tmp_path: Path) -> None:
    """Plain artifacts, no model-settings.yaml: served answers equal in-process predictions."""
    import httpx

    from tests.conftest import ServerProcess

    logreg = LogisticRegression(max_iter=500).fit(X, LABELS)
    (tmp_path / "repo" / "iris").mkdir(parents=True)
    joblib.dump(logreg, tmp_path / "repo" / "iris" / "model.joblib")
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4},
                        xgb.DMatrix(X, label=LABELS > 0), num_boost_round=30)
    (tmp_path / "repo" / "xgb").mkdir()
    booster.save_model(str(tmp_path / "repo" / "xgb" / "model.json"))
    server = ServerProcess(tmp_path / "repo",
                           env={"XDG_CACHE_HOME": str(tmp_path / "cache")}).wait_ready()
    try:
        def infer(model: str, rows: np.ndarray, datatype: str) -> dict[str, np.ndarray]:
            body = {"inputs": [{"name": "input-0", "shape": list(rows.shape),
                                "datatype": datatype, "data": rows.ravel().tolist()}],
                    "outputs": [{"name": "predict"}, {"name": "predict_proba"}]}
            answer = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            return {o["name"]: np.array(o["data"]).reshape(o["shape"])
                    for o in answer.json()["outputs"]}

        got = infer("iris", ROWS, "FP64")
        np.testing.assert_array_equal(got["predict"], logreg.predict(ROWS))
        np.testing.assert_allclose(got["predict_proba"], logreg.predict_proba(ROWS), rtol=1e-9,
                                   atol=0)
        rows = ROWS.astype(np.float32)
        positive = booster.predict(xgb.DMatrix(rows))
        got = infer("xgb", rows, "FP32")
        np.testing.assert_array_equal(got["predict"], (positive > 0.5).astype(np.int64))
        np.testing.assert_allclose(got["predict_proba"][:, 1], positive, rtol=1e-5, atol=1e-6)
        log = server.log()
        assert "compiled to ONNX by skl2onnx (LogisticRegression)" in log
        assert "compiled to ONNX by onnxmltools (binary:logistic)" in log
    finally:
        server.stop()
