"""Custom Python models (runtimes.python.Model) through a real ``turnout serve``: the
``--model-class`` flag, async hooks, ``str``/``base64`` content types in both directions,
batching, and load errors that stay on their own model."""

from __future__ import annotations

import base64
import importlib.util
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml

from runtimes.python import PythonRuntime
from serving.protocol.errors import ModelLoadError
from serving.runtime.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom_model"


def _shared() -> Any:
    spec = importlib.util.spec_from_file_location("turnout_tests_shared", ROOT / "tests" /
                                                  "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHARED = _shared()

TEXT_MODEL = '''
import asyncio
import numpy as np
from runtimes.python import Model


class Text(Model):
    """Async hooks; str in and out, base64 in and out."""

    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1], "content_type": "str"},
              {"name": "blob", "datatype": "BYTES", "shape": [-1], "content_type": "base64"}]
    outputs = [{"name": "reversed", "datatype": "BYTES", "shape": [-1], "content_type": "str"},
               {"name": "blob_size", "datatype": "INT64", "shape": [-1]},
               {"name": "blob_back", "datatype": "BYTES", "shape": [-1], "content_type": "base64"}]

    async def load(self):
        await asyncio.sleep(0)
        self.loop = asyncio.get_running_loop()  # the model's own loop, kept for its lifetime

    async def predict(self, inputs):
        assert asyncio.get_running_loop() is self.loop
        assert all(type(t) is str for t in inputs["text"])
        assert all(type(b) is bytes for b in inputs["blob"])
        return {"reversed": np.array([t[::-1] for t in inputs["text"]], dtype=object),
                "blob_size": np.array([len(b) for b in inputs["blob"]], dtype=np.int64),
                "blob_back": inputs["blob"]}
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("custom") / "models"
    root.mkdir()
    (root / "text").mkdir()
    (root / "text" / "textmodel.py").write_text(TEXT_MODEL)
    (root / "text" / "model-settings.yaml").write_text(yaml.safe_dump(
        {"model_class": "textmodel:Text", "batching": {"max_batch_size": 8,
                                                       "max_latency_ms": 5}}))
    (root / "badclass").mkdir()
    (root / "badclass" / "model-settings.yaml").write_text(yaml.safe_dump(
        {"runtime": "python", "model_class": "nowhere:Nothing"}))
    (root / "crashes").mkdir()
    (root / "crashes" / "boom.py").write_text(textwrap.dedent('''
        from runtimes.python import Model

        class Boom(Model):
            inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
            def load(self):
                raise OSError("weights.bin is missing")
    '''))
    (root / "crashes" / "model-settings.yaml").write_text(yaml.safe_dump(
        {"model_class": "boom:Boom"}))
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Any]:
    proc = SHARED.ServerProcess(repo)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_broken_custom_models_fail_alone_with_their_reason(server: Any) -> None:
    index = {e["name"]: e for e in httpx.post(f"{server.url}/v2/repository/index").json()}
    assert index["text"]["state"] == "READY"
    assert index["badclass"]["state"] == "UNAVAILABLE"
    assert "nowhere" in index["badclass"]["reason"]
    assert index["crashes"]["state"] == "UNAVAILABLE"
    assert "weights.bin is missing" in index["crashes"]["reason"]


TEXTS = np.array(["turnout", "été", "abc"], dtype=object)
BLOBS = [b"\x00\x01\xff", b"", b"hello"]


@pytest.mark.parametrize("transport", ["json", "binary", "grpc"])
def test_async_model_with_str_and_base64_content_types(server: Any, transport: str) -> None:
    blobs = np.array([base64.b64encode(b) for b in BLOBS], dtype=object)
    texts = np.array([t.encode() for t in TEXTS], dtype=object)
    if transport == "grpc":
        client: Any = grpcclient.InferenceServerClient(server.grpc_url)
        module: Any = grpcclient
    else:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        module = httpclient
    tensors = []
    for name, array in (("text", texts), ("blob", blobs)):
        tensor = module.InferInput(name, [3], "BYTES")
        if transport == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=transport == "binary")
        tensors.append(tensor)
    result = client.infer("text", tensors)
    assert [x.decode() for x in result.as_numpy("reversed")] == [t[::-1] for t in TEXTS]
    assert result.as_numpy("blob_size").tolist() == [len(b) for b in BLOBS]
    assert [base64.b64decode(x) for x in result.as_numpy("blob_back")] == BLOBS
    client.close()


def test_request_content_type_overrides_and_bad_base64_is_a_400(server: Any) -> None:
    body = {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["abc"]},
        {"name": "blob", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}
    reply = httpx.post(f"{server.url}/v2/models/text/infer", json=body)
    assert reply.status_code == 400
    assert "base64" in reply.json()["error"]
    # the input's own parameters win over the declared content type: np passes bytes as sent
    body["inputs"][1]["parameters"] = {"content_type": "np"}
    reply = httpx.post(f"{server.url}/v2/models/text/infer", json=body)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    assert outputs["reversed"] == ["cba"] and outputs["blob_size"] == [len("not base64!")]


def test_model_class_flag_serves_a_folder_without_settings(tmp_path: Path) -> None:
    folder = tmp_path / "iris"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("model-settings.yaml",
                                                                   "__pycache__"))
    proc = SHARED.ServerProcess(folder, "--model-class", "model:IrisScorer")
    try:
        proc.wait_ready()
        client = grpcclient.InferenceServerClient(proc.grpc_url)
        x = np.random.default_rng(0).uniform(0, 8, size=(4, 4))
        tensor = grpcclient.InferInput("measurements", [4, 4], "FP64")
        tensor.set_data_from_numpy(x)
        result = client.infer("iris", [tensor])
        reference = PythonRuntime(ModelSettings(name="iris", artifact=EXAMPLE,
                                                model_class="model:IrisScorer"))
        reference.load()
        expected = reference.predict({"measurements": x}, ["probabilities", "species"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"])
        assert result.as_numpy("species").tolist() == expected["species"].tolist()
        client.close()
    finally:
        proc.stop()


def test_model_class_errors_are_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="module:Class"):
        PythonRuntime(ModelSettings(name="m", artifact=tmp_path, model_class="nocolon")).load()
    with pytest.raises(ModelLoadError, match="not a subclass"):
        PythonRuntime(ModelSettings(name="m", artifact=tmp_path,
                                    model_class="pathlib:Path")).load()
    with pytest.raises(ModelLoadError, match="needs model_class"):
        PythonRuntime(ModelSettings(name="m", artifact=tmp_path)).load()
    (tmp_path / "m.py").write_text("from runtimes.python import Model\n"
                                   "class M(Model):\n    def predict(self, x):\n"
                                   "        return x['x'] * 2\n")
    with pytest.raises(ModelLoadError, match="declares no inputs"):
        PythonRuntime(ModelSettings(name="m", artifact=tmp_path, model_class="m:M")).load()
    runtime = PythonRuntime(ModelSettings(
        name="m", artifact=tmp_path, model_class="m:M",
        inputs=[{"name": "x", "datatype": "INT32", "shape": [-1, 2]}]))
    runtime.load()  # outputs learned from one prediction on zeros
    assert [(o.name, o.datatype, o.shape) for o in runtime.outputs] == [
        ("output-0", "INT32", (-1, 2))]
    got = runtime.predict({"x": np.array([[1, 2]], dtype=np.int32)}, ["output-0"])
    assert got["output-0"].tolist() == [[2, 4]]
