"""LightGBM boosters answer what ``Booster.predict`` answers, as KServe's and MLServer's LightGBM
servers do; classifiers' labels are a second output asked for by name. Binary, multiclass and
regression boosters trained here, served by a real ``turnout serve`` over REST V2, V1 and gRPC,
held to the booster called in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import tests.conftest as SHARED  # the real server process
from runtimes.lightgbm import LightGBMRuntime
from serving.protocol.types import TensorSpec
from serving.runtime.settings import ModelSettings

N_FEATURES = 5



def _train(objective: str, **params: Any) -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, N_FEATURES))
    score = x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(scale=0.3, size=300)
    if objective == "binary":
        y = (score > 0).astype(int)
    elif objective == "multiclass":
        y = np.digitize(score, [-0.7, 0.7])  # three classes
    else:
        y = 3.0 * score + 1.0
    booster = lgb.train({"objective": objective, "num_leaves": 7, "min_data_in_leaf": 5,
                         "seed": 0, "num_threads": 1, "verbose": -1, **params},
                        lgb.Dataset(x, label=y), num_boost_round=8)
    return booster, x


@pytest.fixture(scope="module")
def boosters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lightgbm") / "models"
    found: dict[str, Any] = {"root": root}
    for name, objective, params in (("binary", "binary", {}),
                                    ("multiclass", "multiclass", {"num_class": 3}),
                                    ("regression", "regression", {})):
        booster, _ = _train(objective, **params)
        (root / name).mkdir(parents=True)
        booster.save_model(str(root / name / "model.txt"))
        # the reference is the saved file read back, as the server reads it
        found[name] = lgb.Booster(model_file=str(root / name / "model.txt"))
    return found


@pytest.fixture(scope="module")
def server(boosters: dict[str, Any]) -> Iterator[Any]:
    proc = SHARED.ServerProcess(boosters["root"])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES))


def _labels(name: str, values: np.ndarray) -> np.ndarray:
    """The labels LGBMClassifier.predict gives for these Booster.predict values."""
    if name == "binary":
        return np.argmax(np.column_stack((1.0 - values, values)), axis=1)
    return np.argmax(values, axis=1)


def _v2(server: Any, model: str, x: np.ndarray, outputs: list[str] | None = None
        ) -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": list(x.shape),
                                        "datatype": "FP64", "data": x.ravel().tolist()}]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)


def _array(doc: dict[str, Any]) -> np.ndarray:
    return np.asarray(doc["data"]).reshape(doc["shape"])


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_default_output_is_booster_predict(server: Any, boosters: dict[str, Any],
                                           name: str) -> None:
    x = _rows(9, seed=1)
    expected = boosters[name].predict(x)
    assert expected.shape == ((9, 3) if name == "multiclass" else (9,))
    response = _v2(server, name, x)
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert out["name"] == "predict" and out["datatype"] == "FP64"
    assert out["shape"] == list(expected.shape)
    np.testing.assert_array_equal(_array(out), expected)  # float64 travels exactly in JSON
    v1 = httpx.post(f"{server.url}/v1/models/{name}:predict", json={"instances": x.tolist()})
    assert v1.status_code == 200, v1.text
    np.testing.assert_array_equal(np.asarray(v1.json()["predictions"]), expected)


@pytest.mark.parametrize("name", ["binary", "multiclass"])
def test_labels_are_a_second_output_asked_for_by_name(server: Any, boosters: dict[str, Any],
                                                      name: str) -> None:
    x = _rows(40, seed=2)
    values = boosters[name].predict(x)
    labels = _labels(name, values)
    assert 0 < labels.sum() and len(set(labels.tolist())) == (2 if name == "binary" else 3)
    response = _v2(server, name, x, ["label"])
    assert response.status_code == 200, response.text
    (out,) = response.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("label", "INT64", [40])
    np.testing.assert_array_equal(_array(out), labels)
    both = {o["name"]: _array(o) for o in _v2(server, name, x, ["predict", "label"]).json()["outputs"]}
    np.testing.assert_array_equal(both["predict"], values)
    np.testing.assert_array_equal(both["label"], labels)


def test_regression_has_no_label_output(server: Any) -> None:
    response = _v2(server, "regression", _rows(2, seed=3), ["label"])
    assert response.status_code == 400
    assert "label" in response.json()["error"]


def test_metadata_declares_both_outputs(server: Any) -> None:
    def outputs(model: str) -> list[dict[str, Any]]:
        return httpx.get(f"{server.url}/v2/models/{model}").json()["outputs"]

    assert outputs("binary") == [{"name": "predict", "datatype": "FP64", "shape": [-1]},
                                 {"name": "label", "datatype": "INT64", "shape": [-1]}]
    assert outputs("multiclass") == [{"name": "predict", "datatype": "FP64", "shape": [-1, 3]},
                                     {"name": "label", "datatype": "INT64", "shape": [-1]}]
    assert outputs("regression") == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


@pytest.mark.parametrize("name", ["binary", "multiclass", "regression"])
def test_grpc_answers_like_the_booster(server: Any, boosters: dict[str, Any], name: str) -> None:
    x = _rows(6, seed=4)
    expected = boosters[name].predict(x)
    tensor = grpcclient.InferInput("input-0", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(name, [tensor])  # no outputs named: the default one
        np.testing.assert_array_equal(result.as_numpy("predict"), expected)
        assert result.as_numpy("label") is None
        if name != "regression":
            wanted = [grpcclient.InferRequestedOutput("label")]
            labels = client.infer(name, [tensor], outputs=wanted).as_numpy("label")
            np.testing.assert_array_equal(labels, _labels(name, expected))
    finally:
        client.close()


def test_binary_threshold_is_the_wrappers(tmp_path: Path) -> None:
    """A binary booster saved from LGBMClassifier: its labels are the wrapper's predict, its
    default output the booster's probability of class 1 (predict_proba's second column)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, N_FEATURES))
    y = (x[:, 0] - x[:, 3] > 0).astype(int)
    model = lgb.LGBMClassifier(n_estimators=6, num_leaves=5, random_state=0, n_jobs=1,
                               verbose=-1).fit(x, y)
    model.booster_.save_model(str(tmp_path / "model.txt"))
    runtime = LightGBMRuntime(ModelSettings(name="m", artifact=tmp_path))
    runtime.load()
    assert runtime.outputs == [TensorSpec("predict", "FP64", (-1,)),
                               TensorSpec("label", "INT64", (-1,))]
    assert runtime.default_outputs == ["predict"]
    rows = rng.normal(size=(50, N_FEATURES))
    got = runtime.predict({"input-0": rows}, ["predict", "label"])
    np.testing.assert_allclose(got["predict"], model.predict_proba(rows)[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(got["label"], model.predict(rows))

