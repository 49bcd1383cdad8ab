"""XGBoost specifics: outputs per objective, parity with the sklearn wrapper, missing values."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xgboost as xgb
from scipy.special import expit

from runtimes.xgboost import XGBoostRuntime
from serving.protocol.types import TensorSpec
from serving.runtime.settings import ModelSettings

if TYPE_CHECKING:
    from conftest import ModelCase

Iris = tuple[np.ndarray, np.ndarray]


def save_and_load(model: Any, path: Path) -> XGBoostRuntime:
    model.save_model(str(path))
    runtime = XGBoostRuntime(ModelSettings(name="m", artifact=path))
    runtime.load()
    return runtime


def test_binary_classifier_gives_both_class_probabilities(xgb_classifier: ModelCase) -> None:
    runtime = xgb_classifier.load()
    assert runtime.inputs == [TensorSpec("input-0", "FP32", (-1, 4))]
    assert runtime.outputs == [TensorSpec("predict", "INT64", (-1,)),
                               TensorSpec("predict_proba", "FP32", (-1, 2))]
    assert runtime.default_outputs == ["predict"]
    proba = runtime.predict(xgb_classifier.batch(runtime, 8), ["predict_proba"])["predict_proba"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_multiclass_booster_gives_one_column_per_class(xgb_booster: ModelCase) -> None:
    runtime = xgb_booster.load()
    assert runtime.outputs == [TensorSpec("predict", "INT64", (-1,)),
                               TensorSpec("predict_proba", "FP32", (-1, 3))]


def test_regressor_has_only_predict(xgb_regressor: ModelCase) -> None:
    runtime = xgb_regressor.load()
    assert runtime.outputs == [TensorSpec("predict", "FP32", (-1,))]


def test_softmax_classifier_matches_the_wrapper(iris: Iris, tmp_path: Path) -> None:
    model = xgb.XGBClassifier(objective="multi:softmax", n_estimators=4, max_depth=2,
                              random_state=0, n_jobs=1).fit(*iris)
    runtime = save_and_load(model, tmp_path / "model.json")
    assert runtime.outputs[1] == TensorSpec("predict_proba", "FP32", (-1, 3))
    rows = iris[0][::7].astype(np.float32)
    result = runtime.predict({"input-0": rows}, ["predict", "predict_proba"])
    np.testing.assert_array_equal(result["predict"], model.predict(rows))
    np.testing.assert_allclose(result["predict_proba"], model.predict_proba(rows), rtol=1e-6)


def test_logitraw_probabilities_are_the_sigmoid_of_the_margin(iris: Iris, tmp_path: Path) -> None:
    params = {"objective": "binary:logitraw", "max_depth": 2, "seed": 0, "nthread": 1}
    labels = (iris[1] == 2).astype(int)
    booster = xgb.train(params, xgb.DMatrix(iris[0], label=labels), num_boost_round=4)
    runtime = save_and_load(booster, tmp_path / "model.ubj")
    rows = iris[0][::7].astype(np.float32)
    margin = booster.predict(xgb.DMatrix(rows))
    result = runtime.predict({"input-0": rows}, ["predict", "predict_proba"])
    np.testing.assert_allclose(result["predict_proba"][:, 1], expit(margin), rtol=1e-6)
    np.testing.assert_array_equal(result["predict"], (margin > 0).astype(int))


def test_early_stopped_model_predicts_with_its_best_iteration(iris: Iris, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = (iris[1] == 1).astype(int)
    noisy = rng.permutation(labels)  # validation labels unrelated to the features: stops early
    model = xgb.XGBClassifier(n_estimators=40, max_depth=3, early_stopping_rounds=3,
                              random_state=0, n_jobs=1)
    model.fit(iris[0], labels, eval_set=[(iris[0], noisy)], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    runtime = save_and_load(model, tmp_path / "model.json")
    rows = iris[0][::5].astype(np.float32)
    proba = runtime.predict({"input-0": rows}, ["predict_proba"])["predict_proba"]
    np.testing.assert_allclose(proba, model.predict_proba(rows), rtol=1e-6)
    every_tree = model.get_booster().inplace_predict(rows, iteration_range=(0, 0))
    assert not np.allclose(proba[:, 1], every_tree)


def test_nan_is_a_missing_value(xgb_booster: ModelCase) -> None:
    runtime = xgb_booster.load()
    assert runtime.accepts_non_finite is True
    rows = np.array([[np.nan, 3.0, 1.4, 0.2], [6.0, 3.0, np.nan, np.nan]], dtype=np.float32)
    np.testing.assert_allclose(
        runtime.predict({"input-0": rows}, ["predict_proba"])["predict_proba"],
        xgb_booster.model.predict(xgb.DMatrix(rows)), rtol=1e-6)


def test_linear_booster_is_served_through_a_dmatrix(iris: Iris, tmp_path: Path) -> None:
    params = {"booster": "gblinear", "objective": "reg:squarederror", "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(iris[0], label=iris[1]), num_boost_round=4)
    runtime = save_and_load(booster, tmp_path / "model.json")
    rows = iris[0][::7].astype(np.float32)
    np.testing.assert_allclose(runtime.predict({"input-0": rows}, ["predict"])["predict"],
                               booster.predict(xgb.DMatrix(rows)), rtol=1e-6)


def test_renamed_input_is_what_predict_reads(xgb_classifier: ModelCase) -> None:
    runtime = xgb_classifier.load(inputs=[{"name": "features", "datatype": "FP32",
                                          "shape": [-1, 4]}])
    rows = np.full((2, 4), 5.0, dtype=np.float32)
    np.testing.assert_array_equal(runtime.predict({"features": rows}, ["predict"])["predict"],
                                  xgb_classifier.model.predict(rows))
