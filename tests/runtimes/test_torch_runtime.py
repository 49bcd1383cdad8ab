"""TorchScript files saved without model-settings.yaml: inputs are learned from the scripted
``forward`` (names from its signature, sizes from the layers that read them, -1 where nothing
tells) and the model serves through a real ``turnout serve``, answering what the module
computes in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

import tests.conftest as SHARED  # the real server process
from runtimes.torch import TorchRuntime
from serving.protocol.errors import ModelLoadError
from serving.protocol.types import TensorSpec
from serving.runtime.settings import ModelSettings


class Scorer(torch.nn.Module):
    """An MLP with a softmax head; forward's argument is called ``features``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(features), dim=1)


class Blend(torch.nn.Module):
    """Two inputs no layer sizes, a dict of outputs, and a non-tensor argument with a
    default, which stays at its default."""

    def forward(self, a: torch.Tensor, b: torch.Tensor, weight: float = 0.25
                ) -> dict[str, torch.Tensor]:
        return {"mix": a * weight + b * (1.0 - weight), "gap": (a - b).abs()}


class Edges(torch.nn.Module):
    """A convolution over images of any size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(image))


class Tokens(torch.nn.Module):
    """Embedding indices: INT64, not FP32."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(12, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).mean(dim=1)


MODELS = {"scorer": Scorer, "blend": Blend, "edges": Edges, "tokens": Tokens}


def _save(cls: type[torch.nn.Module], folder: Path) -> Any:
    """``torch.jit.script`` saved with ``torch.jit.save``, nothing beside it; the module as it
    is read back is the reference."""
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    torch.jit.save(torch.jit.script(cls().eval()), str(folder / "model.pt"))
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt"]
    return torch.jit.load(str(folder / "model.pt"))


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("torchscript") / "models"
    found: dict[str, Any] = {name: _save(cls, root / name) for name, cls in MODELS.items()}
    found["root"] = root
    return found


@pytest.fixture(scope="module")
def server(scripted: dict[str, Any]) -> Iterator[Any]:
    proc = SHARED.ServerProcess(scripted["root"])
    try:
        yield proc.wait_ready(timeout=120)
    finally:
        proc.stop()


def _reference(module: Any, *arrays: np.ndarray) -> dict[str, np.ndarray]:
    """The module's own answer, on one thread as the server runs it (intra_op_threads: 1),
    so sums add up in the same order and the answers are equal to the bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(a) for a in arrays))
    finally:
        torch.set_num_threads(threads)
    if isinstance(result, dict):
        return {k: v.numpy() for k, v in result.items()}
    return {"output-0": result.numpy()}


def _infer(server: Any, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    body = {"inputs": [{"name": name, "shape": list(a.shape), "datatype": datatypes[a.dtype],
                        "data": a.ravel().tolist()} for name, a in inputs.items()]}
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
            for o in response.json()["outputs"]}


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].shape == array.shape, name
        # float32 travels exactly over JSON (shortest repr) and gRPC
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def test_metadata_comes_from_the_scripted_forward(server: Any) -> None:
    def meta(model: str) -> dict[str, Any]:
        doc = httpx.get(f"{server.url}/v2/models/{model}").json()
        assert doc["state"] == "READY", doc
        return {"inputs": doc["inputs"], "outputs": doc["outputs"]}

    assert meta("scorer") == {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}]}
    assert meta("blend") == {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, -1]},
                   {"name": "b", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "mix", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "gap", "datatype": "FP32", "shape": [-1, -1]}]}
    assert meta("edges") == {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]}],
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 2, -1, -1]}]}
    assert meta("tokens") == {
        "inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 5]}]}


def test_scripted_modules_answer_like_the_module(server: Any, scripted: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(6, 4)).astype(np.float32)
    _assert_same(_infer(server, "scorer", {"features": features}),
                 _reference(scripted["scorer"], features))
    a, b = (rng.normal(size=(3, 7)).astype(np.float32) for _ in range(2))
    _assert_same(_infer(server, "blend", {"a": a, "b": b}), _reference(scripted["blend"], a, b))
    image = rng.normal(size=(2, 3, 5, 9)).astype(np.float32)  # any height and width
    _assert_same(_infer(server, "edges", {"image": image}),
                 _reference(scripted["edges"], image))
    ids = rng.integers(0, 12, size=(4, 6))
    _assert_same(_infer(server, "tokens", {"ids": ids}), _reference(scripted["tokens"], ids))


def test_learned_sizes_are_checked(server: Any) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32",
                        "data": [0.0] * 5}]}
    response = httpx.post(f"{server.url}/v2/models/scorer/infer", json=body)
    assert response.status_code == 400
    assert "has 5 features but the model expects 4" in response.json()["error"]


def test_grpc_answers_like_the_module(server: Any, scripted: dict[str, Any]) -> None:
    features = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    tensor = grpcclient.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        got = client.infer("scorer", [tensor]).as_numpy("output-0")
    finally:
        client.close()
    _assert_same({"output-0": got}, _reference(scripted["scorer"], features))


def _runtime(folder: Path, **settings: Any) -> TorchRuntime:
    runtime = TorchRuntime(ModelSettings(name="m", artifact=folder, **settings))
    runtime.load()
    return runtime


def test_declared_inputs_still_win(scripted: dict[str, Any]) -> None:
    runtime = _runtime(scripted["root"] / "blend",
                       inputs=[{"name": "left", "datatype": "FP64", "shape": [-1, 2]},
                               {"name": "right", "datatype": "FP64", "shape": [-1, 2]}])
    assert runtime.inputs == [TensorSpec("left", "FP64", (-1, 2)),
                              TensorSpec("right", "FP64", (-1, 2))]
    assert [o.shape for o in runtime.outputs] == [(-1, 2), (-1, 2)]


class Counted(torch.nn.Module):
    def forward(self, x: torch.Tensor, times: int) -> torch.Tensor:
        return x * times


class FixedImage(torch.nn.Module):
    """Takes 3x10x10 images only: no size a probe could guess."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, kernel_size=3)
        self.head = torch.nn.Linear(2 * 8 * 8, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.conv(image), 1))


def test_a_non_tensor_argument_without_default_is_a_load_error(tmp_path: Path) -> None:
    _save(Counted, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="argument 'times' is int, not a tensor"):
        _runtime(tmp_path / "m")


def test_sizes_no_probe_finds_ask_for_a_declaration(tmp_path: Path) -> None:
    module = _save(FixedImage, tmp_path / "m")
    with pytest.raises(ModelLoadError, match=r"forward\(image\) fails .*declare them"):
        _runtime(tmp_path / "m")
    runtime = _runtime(tmp_path / "m", inputs=[{"name": "image", "datatype": "FP32",
                                                "shape": [-1, 3, 10, 10]}])
    image = np.random.default_rng(5).normal(size=(2, 3, 10, 10)).astype(np.float32)
    _assert_same(runtime.predict({"image": image}, ["output-0"]), _reference(module, image))


def test_a_traced_module_without_settings_loads_too(tmp_path: Path) -> None:
    torch.manual_seed(1)
    folder = tmp_path / "m"
    folder.mkdir()
    traced = torch.jit.trace(torch.nn.Sequential(torch.nn.Linear(6, 2), torch.nn.Tanh()).eval(),
                             torch.zeros(3, 6))
    torch.jit.save(traced, str(folder / "model.pt"))
    module = torch.jit.load(str(folder / "model.pt"))
    runtime = _runtime(folder)
    assert runtime.inputs == [TensorSpec("input", "FP32", (-1, 6))]  # Sequential.forward(input)
    assert runtime.outputs == [TensorSpec("output-0", "FP32", (-1, 2))]
    x = np.random.default_rng(6).normal(size=(4, 6)).astype(np.float32)
    _assert_same(runtime.predict({"input": x}, ["output-0"]), _reference(module, x))
