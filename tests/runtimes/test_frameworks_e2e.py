"""Every new framework through a real ``turnout serve``: LightGBM, TorchScript, torch.export,
a TensorFlow SavedModel (two signatures), the custom Python model example and the pandas
pipeline example. Each is called with tritonclient over REST JSON, REST binary and gRPC, and
must answer exactly what the framework computes in this process.

One server holds all of them (TensorFlow and torch cost seconds to import), shared by the module.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

if TYPE_CHECKING:
    from conftest import ModelCase

ROOT = Path(__file__).resolve().parents[2]
TRANSPORTS = ["json", "binary", "grpc"]


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED = _load(ROOT / "tests" / "conftest.py", "turnout_tests_shared")
PANDAS_EXAMPLE = _load(ROOT / "examples" / "sklearn_pandas" / "make_model.py",
                       "turnout_example_sklearn_pandas")


def _copy(case: ModelCase, folder: Path, settings: dict[str, Any] | None = None) -> None:
    source = case.artifact if case.artifact.is_dir() else case.artifact.parent
    shutil.copytree(source, folder)
    if settings:
        (folder / "model-settings.yaml").write_text(yaml.safe_dump(settings))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, lgbm_booster: ModelCase,
        torch_script: ModelCase, torch_export: ModelCase, tf_savedmodel: ModelCase,
        python_custom: ModelCase) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("frameworks") / "models"
    root.mkdir()
    _copy(lgbm_booster, root / "lgbm")
    _copy(torch_script, root / "torch_pt", torch_script.settings)
    _copy(torch_export, root / "torch_pt2")
    _copy(tf_savedmodel, root / "tf" / "1")
    _copy(tf_savedmodel, root / "tf_shout", {"parameters": {"signature_name": "shout"}})
    shutil.copytree(ROOT / "examples" / "custom_model", root / "custom",
                    ignore=shutil.ignore_patterns("__pycache__"))
    churn = PANDAS_EXAMPLE.build(root / "churn")
    return {"root": root, "churn": churn, "lgbm": lgbm_booster, "torch_pt": torch_script,
            "torch_pt2": torch_export, "tf": tf_savedmodel, "custom": python_custom}


@pytest.fixture(scope="module")
def server(zoo: dict[str, Any]) -> Iterator[Any]:
    proc = SHARED.ServerProcess(zoo["root"])
    try:
        yield proc.wait_ready(timeout=120)
    finally:
        proc.stop()


def infer(server: Any, transport: str, model: str, inputs: dict[str, np.ndarray],
          outputs: list[str], datatypes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """One request through tritonclient; outputs as numpy arrays."""
    module: Any = grpcclient if transport == "grpc" else httpclient
    binary = transport == "binary"
    tensors = []
    for name, array in inputs.items():
        datatype = (datatypes or {}).get(name) or _datatype(array)
        tensor = module.InferInput(name, list(array.shape), datatype)
        if transport == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    if transport == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        wanted = [grpcclient.InferRequestedOutput(o) for o in outputs]
    else:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        wanted = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    try:
        result = client.infer(model, tensors, outputs=wanted)
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


def _datatype(array: np.ndarray) -> str:
    from serving.protocol.datatypes import datatype_of

    return datatype_of(array)


def assert_equal(got: np.ndarray, expected: Any, name: str) -> None:
    expected = np.asarray(expected)
    assert got.shape == expected.shape, name
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=name)
    elif expected.dtype == object or got.dtype == object:
        as_text = [x.decode() if isinstance(x, bytes) else str(x) for x in got.reshape(-1)]
        want = [x.decode() if isinstance(x, bytes) else str(x) for x in expected.reshape(-1)]
        assert as_text == want, name
    else:
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_every_model_loads_with_derived_metadata(server: Any) -> None:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    meta = {name: client.get_model_metadata(name)
            for name in ("lgbm", "torch_pt", "torch_pt2", "tf", "tf_shout", "iris-custom",
                         "churn")}
    assert meta["lgbm"]["platform"] == "lightgbm"
    assert meta["lgbm"]["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    # nn.Sequential.forward(input): the exported program keeps the argument name
    assert meta["torch_pt2"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["torch_pt2"]["outputs"] == [{"name": "output-0", "datatype": "FP32",
                                             "shape": [-1, 3]}]
    assert meta["torch_pt"]["platform"] == "pytorch_libtorch"
    assert meta["tf"]["platform"] == "tensorflow_savedmodel"
    assert [o["name"] for o in meta["tf"]["outputs"]] == ["label", "probabilities"]
    assert meta["tf_shout"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["iris-custom"]["platform"] == "python"
    assert [i["name"] for i in meta["churn"]["inputs"]] == ["plan", "tenure_months",
                                                           "monthly_spend"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lightgbm_equals_the_booster(server: Any, zoo: dict[str, Any], transport: str) -> None:
    x = np.random.default_rng(1).uniform(0, 8, size=(7, 4))
    got = infer(server, transport, "lgbm", {"input-0": x}, ["predict", "label"])
    expected = zoo["lgbm"].reference(x)
    for name in ("predict", "label"):
        assert_equal(got[name], expected[name], name)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("model", ["torch_pt", "torch_pt2"])
def test_torch_equals_the_module(server: Any, zoo: dict[str, Any], transport: str,
                                 model: str) -> None:
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    got = infer(server, transport, model, {"x": x}, ["output-0"])
    assert_equal(got["output-0"], zoo[model].reference(x)["output-0"], model)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tensorflow_signatures_equal_the_savedmodel(server: Any, zoo: dict[str, Any],
                                                    transport: str) -> None:
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    got = infer(server, transport, "tf", {"x": x}, ["label", "probabilities"])
    expected = zoo["tf"].reference(x)
    assert_equal(got["probabilities"], expected["probabilities"], "probabilities")
    assert_equal(got["label"], expected["label"], "label")

    text = np.array([b"turnout", b"serves", "\u00e9t\u00e9".encode()], dtype=object)
    got = infer(server, transport, "tf_shout", {"text": text}, ["upper", "length"])
    shout = zoo["tf"].model.signatures["shout"](text=text)
    assert_equal(got["upper"], shout["upper"].numpy(), "upper")
    assert_equal(got["length"], shout["length"].numpy(), "length")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_custom_model_example_equals_the_class(server: Any, zoo: dict[str, Any],
                                               transport: str) -> None:
    x = np.random.default_rng(4).uniform(0, 8, size=(9, 4))
    got = infer(server, transport, "iris-custom", {"measurements": x},
                ["probabilities", "species"])
    model = zoo["custom"].model
    expected = model.postprocess(model.predict(x))
    assert_equal(got["probabilities"], expected["probabilities"], "probabilities")
    assert_equal(got["species"], expected["species"], "species")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pandas_pipeline_example_takes_named_columns(server: Any, zoo: dict[str, Any],
                                                     transport: str) -> None:
    import pandas as pd

    frame, _ = PANDAS_EXAMPLE.training_frame(rows=8, seed=5)
    inputs = {"plan": frame["plan"].to_numpy().astype(object),
              "tenure_months": frame["tenure_months"].to_numpy(),
              "monthly_spend": frame["monthly_spend"].to_numpy()}
    # the columns in another order than the pipeline's: they are matched by name
    got = infer(server, transport, "churn", dict(reversed(list(inputs.items()))),
                ["predict", "predict_proba"], {"plan": "BYTES"})
    pipeline = zoo["churn"]
    assert_equal(got["predict"], pipeline.predict(frame), "predict")
    assert_equal(got["predict_proba"], pipeline.predict_proba(pd.DataFrame(inputs)),
                 "predict_proba")


def test_server_log_names_every_runtime(server: Any) -> None:
    log = server.log()
    for runtime in ("lightgbm", "torch", "tensorflow", "python", "sklearn"):
        assert f"({runtime})" in log, runtime
    assert "UNAVAILABLE" not in log and "failed to load" not in log
    assert sys.modules.get("tensorflow") is not None  # the reference ran in this process too
