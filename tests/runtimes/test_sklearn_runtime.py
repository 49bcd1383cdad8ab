"""scikit-learn specifics: which methods become outputs, NaN tags, labels, feature names."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from runtimes.sklearn import SklearnRuntime
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.settings import ModelSettings

if TYPE_CHECKING:
    from conftest import ModelCase


def dump_and_load(model: Any, tmp_path: Path, **settings: Any) -> SklearnRuntime:
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=path, **settings))
    runtime.load()
    return runtime


def test_classifier_declares_labels_and_probabilities(sklearn_logreg: ModelCase) -> None:
    runtime = sklearn_logreg.load()
    assert runtime.inputs == [TensorSpec("input-0", "FP64", (-1, 4))]
    assert runtime.outputs == [TensorSpec("predict", "INT64", (-1,)),
                               TensorSpec("predict_proba", "FP64", (-1, 3))]
    assert runtime.default_outputs == ["predict"]


def test_regressor_has_no_predict_proba(sklearn_forest: ModelCase) -> None:
    runtime = sklearn_forest.load()
    assert runtime.outputs == [TensorSpec("predict", "FP64", (-1,))]
    assert runtime.default_outputs == ["predict"]


def test_non_finite_acceptance_follows_the_estimator_tags(
        sklearn_logreg: ModelCase, iris: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    assert sklearn_logreg.load().accepts_non_finite is False
    hist = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(*iris)
    runtime = dump_and_load(hist, tmp_path)
    assert runtime.accepts_non_finite is True
    rows = np.array([[np.nan, 3.0, 1.4, 0.2], [6.0, np.nan, 5.0, 2.0]])
    np.testing.assert_array_equal(runtime.predict({"input-0": rows}, ["predict"])["predict"],
                                  hist.predict(rows))


def test_string_labels_come_back_as_python_str(
        iris: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    names = np.array(["setosa", "versicolor", "virginica"])[iris[1].astype(int)]
    model = LogisticRegression(max_iter=1000).fit(iris[0], names)
    runtime = dump_and_load(model, tmp_path)
    assert runtime.outputs[0] == TensorSpec("predict", "BYTES", (-1,))
    rows = iris[0][::30]
    labels = runtime.predict({"input-0": rows}, ["predict"])["predict"]
    assert labels.dtype == object and all(type(label) is str for label in labels)
    assert labels.tolist() == model.predict(rows).tolist()


def test_estimator_fitted_on_a_dataframe_gets_its_column_names(
        iris: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    model = LogisticRegression(max_iter=1000).fit(pd.DataFrame(iris[0], columns=columns), iris[1])
    runtime = dump_and_load(model, tmp_path)
    assert runtime.inputs == [TensorSpec("input-0", "FP64", (-1, 4))]
    rows = iris[0][::10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "X does not have valid feature names" would fail here
        got = runtime.predict({"input-0": rows}, ["predict_proba"])["predict_proba"]
    np.testing.assert_allclose(got, model.predict_proba(pd.DataFrame(rows, columns=columns)))


def test_renamed_input_is_what_predict_reads(sklearn_logreg: ModelCase) -> None:
    runtime = sklearn_logreg.load(inputs=[{"name": "features", "datatype": "FP64",
                                          "shape": [-1, 4]}])
    rows = np.full((2, 4), 3.0)
    np.testing.assert_array_equal(runtime.predict({"features": rows}, ["predict"])["predict"],
                                  sklearn_logreg.model.predict(rows))


def test_predict_errors_propagate_unwrapped(sklearn_logreg: ModelCase) -> None:
    runtime = sklearn_logreg.load(parameters={"compile": "none"})  # scikit-learn's own error
    # (NaN is refused earlier, by the data plane, so the runtime skips that check.)
    with pytest.raises(ValueError, match="features"):
        runtime.predict({"input-0": np.ones((1, 3))}, ["predict"])


def test_pickle_without_predict_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not an estimator"):
        dump_and_load({"weights": [1, 2]}, tmp_path)


def test_unfitted_estimator_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="fitted"):
        dump_and_load(LogisticRegression(), tmp_path)


def test_two_declared_inputs_are_a_load_error(sklearn_logreg: ModelCase) -> None:
    spec = {"datatype": "FP64", "shape": [-1, 2]}
    with pytest.raises(ModelLoadError, match="one input"):
        sklearn_logreg.load(inputs=[{"name": "a", **spec}, {"name": "b", **spec}])
