"""``parameters: {compile: onnx}``: linear scikit-learn models served by a verified ONNX copy."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from runtimes import compiled as compiled_module
from runtimes import sklearn_onnx
from runtimes.sklearn import SklearnRuntime
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(7)
X = RNG.normal(size=(200, 5))
LABELS = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)
ROWS = RNG.normal(scale=3.0, size=(64, 5))


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("TURNOUT_MODEL_CACHE", raising=False)
    return cache / "turnout" / "compiled"


def load(model: Any, folder: Path, **parameters: Any) -> SklearnRuntime:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    if not path.exists():
        joblib.dump(model, path)
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=path, parameters=parameters))
    runtime.load()
    return runtime


def test_classifier_is_compiled_verified_and_predicts_what_the_estimator_does(
        tmp_path: Path, private_cache: Path) -> None:
    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    runtime = load(model, tmp_path / "a", compile="onnx")
    assert runtime._compiled is not None and runtime.model is runtime._compiled.session
    assert runtime.inputs == [TensorSpec("input-0", "FP64", (-1, 5))]
    assert runtime.outputs == [TensorSpec("predict", "INT64", (-1,)),
                               TensorSpec("predict_proba", "FP64", (-1, 3))]
    assert runtime.default_outputs == ["predict"] and runtime.accepts_non_finite is False
    out = runtime.predict({"input-0": ROWS}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(out["predict"], model.predict(ROWS))
    assert out["predict"].dtype == model.predict(ROWS).dtype
    np.testing.assert_allclose(out["predict_proba"], model.predict_proba(ROWS), rtol=1e-9)
    (entry,) = private_cache.iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["estimator"] == "LogisticRegression" and (entry / "model.onnx").is_file()


def test_regressor_values_agree_to_1e_9(tmp_path: Path) -> None:
    model = LinearRegression().fit(X, X @ np.arange(1.0, 6.0) + 3)
    runtime = load(model, tmp_path / "r", compile="onnx")
    assert runtime._compiled is not None
    out = runtime.predict({"input-0": ROWS}, ["predict"])
    assert out["predict"].shape == (64,)
    np.testing.assert_allclose(out["predict"], model.predict(ROWS), rtol=1e-9)


def test_a_later_start_serves_the_cache_without_importing_sklearn(tmp_path: Path) -> None:
    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    load(model, tmp_path / "a", compile="onnx")  # first start: compiles into the cache
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from runtimes.sklearn import SklearnRuntime
        from serving.runtime.settings import ModelSettings
        rt = SklearnRuntime(ModelSettings(name="m", artifact={str(tmp_path / 'a' / 'model.joblib')!r},
                                          parameters={{"compile": "onnx"}}))
        rt.load()
        rows = np.asarray(json.loads(sys.stdin.read()))
        out = rt.predict({{"input-0": rows}}, ["predict", "predict_proba"])
        print(json.dumps({{"sklearn": "sklearn" in sys.modules, "scipy": "scipy" in sys.modules,
                           "predict": out["predict"].tolist(),
                           "proba": out["predict_proba"].tolist()}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(ROWS.tolist()),
                          capture_output=True, text=True, cwd=ROOT, env=os.environ.copy(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["sklearn"] is False and got["scipy"] is False
    assert got["predict"] == model.predict(ROWS).tolist()
    np.testing.assert_allclose(got["proba"], model.predict_proba(ROWS), rtol=1e-9)


def test_a_changed_artifact_is_compiled_again(tmp_path: Path, private_cache: Path) -> None:
    first = LogisticRegression(max_iter=500).fit(X, LABELS)
    load(first, tmp_path / "a", compile="onnx")
    second = LogisticRegression(C=0.01, max_iter=500).fit(X, LABELS)
    joblib.dump(second, tmp_path / "a" / "model.joblib")
    runtime = load(second, tmp_path / "a", compile="onnx")
    assert len(list(private_cache.iterdir())) == 2
    np.testing.assert_allclose(runtime.predict({"input-0": ROWS}, ["predict_proba"])
                               ["predict_proba"], second.predict_proba(ROWS), rtol=1e-9)


def test_unsupported_estimators_are_served_by_sklearn_with_the_reason_logged(
        tmp_path: Path, private_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, LABELS)
    with caplog.at_level(logging.WARNING, logger="turnout.runtimes.compiled"):
        runtime = load(model, tmp_path / "f", compile="onnx")
    assert runtime._compiled is None
    assert "RandomForestClassifier is not one of the estimators compiled exactly" in caplog.text
    np.testing.assert_array_equal(runtime.predict({"input-0": ROWS}, ["predict"])["predict"],
                                  model.predict(ROWS))
    assert not private_cache.exists() or not any(private_cache.iterdir())


def test_a_compilation_that_disagrees_is_refused(tmp_path: Path) -> None:
    model = LogisticRegression(max_iter=500).fit(X, LABELS)
    other = LogisticRegression(max_iter=500).fit(X, 2 - LABELS)
    # A real compilation of ``other``, verified against ``model``: the labels must differ.
    joblib.dump(other, tmp_path / "other.joblib")
    compiled, reason = sklearn_onnx.compile_verified(
        other, tmp_path / "other.joblib", [TensorSpec("input-0", "FP64", (-1, 5))],
        [TensorSpec("predict", "INT64", (-1,)), TensorSpec("predict_proba", "FP64", (-1, 3))],
        False, root=tmp_path / "c2")
    assert compiled is not None and reason == ""
    rows = compiled_module.probe_rows(5, np.float64, sklearn_onnx.SCALES)
    mismatch = compiled_module.mismatch_of(
        compiled, lambda r: {"predict": model.predict(r), "predict_proba": model.predict_proba(r)},
        rows, sklearn_onnx.TOLERANCE)
    assert mismatch.startswith("predict labels differ on ")


def test_compile_none_compiles_nothing(tmp_path: Path, private_cache: Path) -> None:
    runtime = load(LogisticRegression(max_iter=500).fit(X, LABELS), tmp_path / "n",
                   compile="none")
    assert runtime._compiled is None and not private_cache.exists()


def test_an_unknown_compile_value_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="parameters.compile must be 'auto', 'onnx' or 'none'"):
        load(LogisticRegression(max_iter=500).fit(X, LABELS), tmp_path / "x", compile="tvm")
