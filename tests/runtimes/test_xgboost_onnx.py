"""``parameters: {compile: onnx}`` for XGBoost: tree boosters served by a verified ONNX copy."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from runtimes.xgboost import XGBoostRuntime
from serving.runtime.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(11)
X = RNG.normal(size=(300, 6)).astype(np.float32)
ROWS = RNG.normal(scale=2.0, size=(80, 6)).astype(np.float32)
ROWS[RNG.random(ROWS.shape) < 0.15] = np.nan  # XGBoost's missing values must route the same


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TURNOUT_MODEL_CACHE", raising=False)
    return tmp_path / "cache" / "turnout" / "compiled"


def train(objective: str, folder: Path, **extra: object) -> Path:
    labels = {"binary:logistic": (X[:, 0] + X[:, 1] > 0).astype(int),
              "binary:logitraw": (X[:, 0] > 0).astype(int),
              "multi:softprob": np.digitize(X[:, 2], [-0.5, 0.5]),
              "reg:squarederror": X @ np.arange(1.0, 7.0)}[objective]
    params = {"objective": objective, "seed": 0, "nthread": 1, **extra}
    if extra.get("booster") != "gblinear":
        params["max_depth"] = 4
    if objective == "multi:softprob":
        params["num_class"] = 3
    booster = xgb.train(params, xgb.DMatrix(X, label=labels), num_boost_round=20)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.json"
    booster.save_model(str(path))
    return path


def load(path: Path, **parameters: object) -> XGBoostRuntime:
    runtime = XGBoostRuntime(ModelSettings(name="m", artifact=path, parameters=parameters))
    runtime.load()
    return runtime


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob", "reg:squarederror"])
def test_compiled_booster_predicts_what_xgboost_does(tmp_path: Path, objective: str) -> None:
    path = train(objective, tmp_path / "m")
    # No parameter means compile: auto — the default serves the verified copy
    plain, fast = load(path, compile="none"), load(path)
    assert plain._compiled is None and fast._compiled is not None
    assert fast.inputs == plain.inputs and fast.outputs == plain.outputs
    assert fast.default_outputs == plain.default_outputs and fast.accepts_non_finite
    names = [spec.name for spec in plain.outputs]
    want = plain.predict({"input-0": ROWS}, names)
    got = fast.predict({"input-0": ROWS}, names)
    for name in names:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        if want[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[name], want[name])


def test_a_later_start_serves_the_cache_without_importing_xgboost(tmp_path: Path) -> None:
    path = train("binary:logistic", tmp_path / "m")
    want = load(path).predict({"input-0": ROWS}, ["predict", "predict_proba"])
    load(path, compile="onnx")  # first start: compiles into the cache
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from runtimes.xgboost import XGBoostRuntime
        from serving.runtime.settings import ModelSettings
        rt = XGBoostRuntime(ModelSettings(name="m", artifact={str(path)!r},
                                          parameters={{"compile": "onnx"}}))
        rt.load()
        rows = np.asarray(json.loads(sys.stdin.read()), dtype=np.float32)
        out = rt.predict({{"input-0": rows}}, ["predict", "predict_proba"])
        print(json.dumps({{"xgboost": "xgboost" in sys.modules,
                           "predict": out["predict"].tolist(),
                           "proba": out["predict_proba"].tolist()}}))
    """)
    rows = [[None if np.isnan(v) else float(v) for v in row] for row in ROWS]
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(rows),
                          capture_output=True, text=True, cwd=ROOT, env=os.environ.copy(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["xgboost"] is False
    assert got["predict"] == want["predict"].tolist()
    np.testing.assert_allclose(got["proba"], want["predict_proba"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("objective,extra,reason", [
    ("binary:logitraw", {}, "objective binary:logitraw is not compiled"),
    ("reg:squarederror", {"booster": "gblinear"}, "gblinear boosters are not compiled"),
])
def test_unsupported_boosters_are_served_by_xgboost_with_the_reason_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, objective: str, extra: dict,
        reason: str) -> None:
    path = train(objective, tmp_path / "m", **extra)
    with caplog.at_level(logging.WARNING, logger="turnout.runtimes.compiled"):
        runtime = load(path, compile="onnx")
    assert runtime._compiled is None and reason in caplog.text
    names = [spec.name for spec in runtime.outputs]
    np.testing.assert_array_equal(runtime.predict({"input-0": ROWS}, names)["predict"],
                                  load(path).predict({"input-0": ROWS}, names)["predict"])


def test_best_iteration_boosters_are_not_compiled(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = train("binary:logistic", tmp_path / "m")
    booster = xgb.Booster(model_file=str(path))
    booster.set_attr(best_iteration="9")
    booster.save_model(str(path))
    with caplog.at_level(logging.WARNING, logger="turnout.runtimes.compiled"):
        runtime = load(path, compile="onnx")
    assert runtime._compiled is None and "best iteration" in caplog.text
