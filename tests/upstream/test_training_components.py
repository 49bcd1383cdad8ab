"""Training components without a server: datasets and their splits, shuffled labels, refused
inputs (each a ValueError that names the problem), and the lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from upstream.datasets import DATASETS, Dataset, load_dataset
from upstream.training import FRAMEWORKS, evaluate, predict_in_process, train


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_loads_as_float32_with_a_stratified_split(name: str) -> None:
    data = load_dataset(name)
    assert data.name == name and data.task in ("classification", "regression")
    assert data.X_train.dtype == data.X_test.dtype == np.float32
    assert data.X_train.shape[1] == data.X_test.shape[1] == len(data.feature_names)
    total = len(data.y_train) + len(data.y_test)
    assert len(data.y_test) == pytest.approx(0.25 * total, abs=1)
    if data.task == "classification":
        assert data.classes == sorted(set(data.y_train.tolist()) | set(data.y_test.tolist()))
        assert set(data.y_test.tolist()) == set(data.classes)  # stratified: every class tested
    else:
        assert data.classes is None and data.y_train.dtype == np.float64


def test_split_is_deterministic_per_seed() -> None:
    a, b, c = (load_dataset("wine", seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.X_test, c.X_test)
    # the generated datasets stay the same data whatever the split seed
    x3, x4 = (load_dataset("make_regression", seed=s) for s in (3, 4))
    rows = lambda d: sorted(map(tuple, np.concatenate([d.X_train, d.X_test])))  # noqa: E731
    assert rows(x3) == rows(x4)


def test_shuffle_labels_permutes_only_the_training_labels() -> None:
    true, shuffled = load_dataset("iris", seed=2), load_dataset("iris", seed=2, shuffle_labels=True)
    np.testing.assert_array_equal(true.X_train, shuffled.X_train)
    np.testing.assert_array_equal(true.y_test, shuffled.y_test)
    assert sorted(true.y_train) == sorted(shuffled.y_train)
    assert (true.y_train != shuffled.y_train).mean() > 0.4


@pytest.mark.parametrize("framework", ["sklearn", "xgboost"])
def test_shuffled_labels_train_a_worse_model(tmp_path: Path, framework: str) -> None:
    good = train(framework, "iris", tmp_path / "good")
    bad = train(framework, "iris", tmp_path / "bad", shuffle_labels=True)
    assert good.metrics["accuracy"] > 0.9
    assert bad.metrics["accuracy"] < good.metrics["accuracy"] - 0.3
    assert bad.metrics["log_loss"] > good.metrics["log_loss"]
    # the folder itself says so, on the true test labels
    assert evaluate(bad.folder, "iris") == pytest.approx(bad.metrics)


def test_a_dataset_object_is_trained_on_as_given(tmp_path: Path) -> None:
    data = load_dataset("breast_cancer", seed=5)
    result = train("sklearn", data, tmp_path / "m", params={"C": 0.5}, seed=5)
    assert result.dataset == "breast_cancer" and result.framework == "sklearn"
    assert result.params == {"estimator": "logistic_regression", "solver": "newton-cholesky",
                             "C": 0.5}
    assert evaluate(result.folder, data) == pytest.approx(result.metrics)
    out = predict_in_process(result.folder, data.X_test[:5])
    assert sorted(out) == ["predict", "predict_proba"] and out["predict_proba"].shape == (5, 2)
    shuffled = train("sklearn", data, tmp_path / "s", seed=5, shuffle_labels=True)
    assert shuffled.metrics["accuracy"] < result.metrics["accuracy"]


def test_defaults_fill_the_hyperparameters_not_given(tmp_path: Path) -> None:
    result = train("xgboost", "iris", tmp_path / "m", params={"max_depth": 2})
    assert result.params["max_depth"] == 2 and result.params["n_estimators"] == 50
    assert result.artifact == "model.json" and result.onnx == "onnx/model.onnx"


def test_a_model_without_a_verified_converter_has_no_onnx_copy_and_says_why(
        tmp_path: Path) -> None:
    result = train("sklearn", "iris", tmp_path / "m",
                   params={"estimator": "random_forest", "n_estimators": 5})
    assert result.onnx is None and "linear models" in result.onnx_reason
    assert not (tmp_path / "m" / "onnx").exists()


def test_unknown_dataset_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*iris.*make_regression"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        train("sklearn", "mnist", tmp_path / "m")
    with pytest.raises(ValueError, match="test_size"):
        load_dataset("iris", test_size=1.5)


def test_unknown_framework_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown framework 'caffe'.*" + ".*".join(FRAMEWORKS)):
        train("caffe", "iris", tmp_path / "m")


@pytest.mark.parametrize(("framework", "params", "message"), [
    ("sklearn", {"n_trees": 3}, "unknown sklearn hyperparameter.*n_trees.*for logistic_regression"),
    ("sklearn", {"estimator": "svm"}, "unknown sklearn estimator 'svm' for classification"),
    ("sklearn", {"estimator": "ridge"}, "unknown sklearn estimator 'ridge' for classification"),
    ("sklearn", {"C": -1.0}, "sklearn logistic_regression: .*C"),
    ("xgboost", {"n_trees": 3, "eta": 1}, "unknown xgboost hyperparameter.*eta, n_trees"),
    ("xgboost", {"max_depth": 0}, "max_depth must be a whole number >= 1"),
    ("lightgbm", {"num_trees": 3}, "unknown lightgbm hyperparameter.*num_trees"),
    ("lightgbm", {"max_depth": 0}, "max_depth must be -1"),
    ("torch", {"hiden": 8}, "unknown torch hyperparameter.*hiden.*known: batch_size"),
    ("torch", {"hidden": [8, 0]}, "hidden must be a width"),
    ("tensorflow", {"epochs": 0}, "epochs must be a whole number >= 1"),
    ("tensorflow", {"lr": "fast"}, "lr must be a number > 0"),
])
def test_bad_hyperparameters_are_refused_by_name(tmp_path: Path, framework: str,
                                                 params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(framework, "iris", tmp_path / "m", params=params)
    assert list(tmp_path.iterdir()) == []  # no folder, no half-written staging folder


def test_an_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        train("sklearn", "iris", tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()  # an empty one, as a pipeline hands out, is filled
    assert train("sklearn", "iris", tmp_path / "empty").folder == tmp_path / "empty"


def test_importing_the_components_imports_no_framework() -> None:
    code = ("import sys, upstream.training, upstream.datasets\n"
            "heavy = {'torch', 'tensorflow', 'xgboost', 'lightgbm', 'sklearn', 'onnx', "
            "'onnxruntime', 'joblib'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stderr


def test_dataset_is_a_frozen_record() -> None:
    data = load_dataset("iris")
    assert isinstance(data, Dataset)
    with pytest.raises(AttributeError):
        data.name = "other"  # type: ignore[misc]
