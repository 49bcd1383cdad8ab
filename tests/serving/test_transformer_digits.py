"""The image example (examples/transformer/digits): PNG bytes through a transformer to a
scikit-learn digits classifier, over V1 (base64 JSON), V2 binary and gRPC (raw bytes)."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "transformer"
CLASS = "transformer:ImageToDigit"


def _png(pixels: np.ndarray, side: int = 8) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.round(pixels.reshape(8, 8) * 255 / 16).astype(np.uint8))
    out = io.BytesIO()
    image.resize((side, side), Image.NEAREST).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_digits", EXAMPLE / "make_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(folder / "model")
    code = folder / "code"
    shutil.copytree(EXAMPLE / "digits", code)
    x, y = load_digits(return_X_y=True)
    picks = [int(np.flatnonzero(y == d)[5]) for d in (0, 3, 7, 9)]
    images = [_png(x[i]) for i in picks[:3]] + [_png(x[picks[3]], side=32)]  # one to resize
    predictor = ServerProcess(folder / "model", "--name", "digits").wait_ready()
    transformer = ServerProcess(code, "--model-class", CLASS, "--name", "digits",
                                "--transformer-for", f"127.0.0.1:{predictor.http_port}")
    try:
        yield {"transformer": transformer.wait_ready(), "images": images,
               "model": folder / "model", "code": code}
    finally:
        transformer.stop()
        predictor.stop()


def _expected(digits: dict) -> dict:
    import joblib

    from runtimes.python import load_model_class
    from serving.runtime.settings import ModelSettings

    cls = load_model_class(CLASS, digits["code"])
    instance = cls(ModelSettings(name="digits", artifact=digits["code"], model_class=CLASS))
    instance.load()
    tensors = instance.preprocess({"image": np.array(digits["images"], dtype=object)})
    model = joblib.load(digits["model"] / "model.joblib")
    out = instance.postprocess({"predict": model.predict(tensors["input-0"])})
    return {"digit": out["digit"].tolist(), "label": out["label"]}


def test_image_bytes_become_digits_over_every_protocol(digits: dict) -> None:
    import tritonclient.grpc as grpcclient

    want = _expected(digits)
    assert want["digit"] == [0, 3, 7, 9]  # the classifier gets the example's digits right
    url = digits["transformer"].url
    encoded = [base64.b64encode(i).decode() for i in digits["images"]]
    v1 = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": encoded}, timeout=30)
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == want["digit"]
    v2 = httpx.post(f"{url}/v2/models/digits/infer", timeout=30, json={"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [4], "data": encoded}]})
    assert {o["name"]: o["data"] for o in v2.json()["outputs"]} == want
    client = grpcclient.InferenceServerClient(digits["transformer"].grpc_url)
    image = grpcclient.InferInput("image", [4], "BYTES")
    image.set_data_from_numpy(np.array(digits["images"], dtype=object))  # raw PNG bytes
    result = client.infer("digits", [image])
    assert result.as_numpy("digit").tolist() == want["digit"]
    assert [s.decode() for s in result.as_numpy("label")] == want["label"]


def test_what_is_not_an_image_is_a_clean_400(digits: dict) -> None:
    url = digits["transformer"].url
    for item, message in ((base64.b64encode(b"plain text").decode(), "not an image"),
                          ("%%% not base64 %%%", "base64")):
        answer = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [item]})
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("preprocess refused the input: ValueError: ")
        assert message in answer.json()["error"]
