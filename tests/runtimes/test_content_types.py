"""Content types: the codecs, how validation picks one per input, and sklearn's ``pd`` mode."""

from __future__ import annotations

import base64
from pathlib import Path

import joblib
import numpy as np
import pytest

from serving.protocol.errors import InvalidInput, ModelLoadError
from serving.protocol.types import InferenceRequest, Tensor
from serving.runtime.content_types import decode_tensor, encode_tensor, from_frame, to_frame
from serving.runtime.settings import ModelSettings
from serving.server.validation import prepare_inputs


def _bytes(*items: bytes) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def test_str_and_base64_decode_and_encode_back() -> None:
    assert decode_tensor("t", _bytes("été".encode(), b"a"), "str").tolist() == ["été", "a"]
    raw = [b"\x00\xff", b""]
    decoded = decode_tensor("b", _bytes(*(base64.b64encode(r) for r in raw)), "base64")
    assert decoded.tolist() == raw
    assert [base64.b64decode(x) for x in encode_tensor("b", decoded, "base64")] == raw
    assert encode_tensor("t", np.array(["x", "é"]), "str").tolist() == [b"x", "é".encode()]
    same = np.arange(3.0)
    assert decode_tensor("n", same, "np") is same and decode_tensor("n", same, None) is same


@pytest.mark.parametrize(("array", "content_type", "message"), [
    (_bytes(b"\xff"), "str", "UTF-8"),
    (_bytes(b"@@"), "base64", "base64"),
    (np.zeros(2), "str", "BYTES"),
    (_bytes(b"a"), "yaml", "unknown content_type"),
])
def test_bad_data_for_a_content_type_is_a_client_error(array: np.ndarray, content_type: str,
                                                       message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_tensor("x", array, content_type)


def test_frames_take_named_columns_and_give_them_back() -> None:
    frame = to_frame({"b": np.array([[1.0], [2.0]]), "a": _bytes(b"x", b"y")}, ["a", "b"])
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].tolist() == ["x", "y"] and frame["b"].tolist() == [1.0, 2.0]
    back = from_frame(frame)
    assert back["a"].tolist() == ["x", "y"] and back["b"].tolist() == [1.0, 2.0]
    with pytest.raises(InvalidInput, match="DataFrame column"):
        to_frame({"m": np.zeros((2, 3))})


class _Runtime:
    """Just what validation reads from a runtime."""

    def __init__(self, settings: ModelSettings, inputs: list) -> None:
        self.settings, self.inputs = settings, inputs
        self.accepts_non_finite = True


def _request(params: dict | None = None, **tensor_params: dict) -> InferenceRequest:
    return InferenceRequest(model_name="m", parameters=params or {}, inputs=[
        Tensor("t", "BYTES", _bytes(b"aGk="), tensor_params.get("t", {})),
        Tensor("n", "FP64", np.ones((1,)), tensor_params.get("n", {}))])


def test_validation_order_input_then_declared_then_request_then_model_default() -> None:
    from serving.protocol.types import TensorSpec

    specs = [TensorSpec("t", "BYTES", (-1,)), TensorSpec("n", "FP64", (-1,))]
    plain = _Runtime(ModelSettings(name="m", artifact=Path(".")), specs)
    assert prepare_inputs(_request(), plain)["t"].tolist() == [b"aGk="]
    assert prepare_inputs(_request({"content_type": "str"}), plain)["t"].tolist() == ["aGk="]
    by_default = _Runtime(ModelSettings(name="m", artifact=Path("."),
                                        parameters={"content_type": "base64"}), specs)
    assert prepare_inputs(_request(), by_default)["t"].tolist() == [b"hi"]
    declared = _Runtime(ModelSettings(name="m", artifact=Path("."), inputs=[
        {"name": "t", "datatype": "BYTES", "content_type": "base64"}]), specs)
    assert prepare_inputs(_request({"content_type": "str"}), declared)["t"].tolist() == [b"hi"]
    own = _request(t={"content_type": "str"})
    assert prepare_inputs(own, declared)["t"].tolist() == ["aGk="]
    with pytest.raises(InvalidInput, match="unknown request content_type"):
        prepare_inputs(_request({"content_type": "xml"}), plain)


def test_unknown_declared_content_type_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="content_type"):
        ModelSettings(name="m", artifact=Path("."), parameters={"content_type": "xml"})


def test_sklearn_pd_mode_needs_every_fitted_column(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LinearRegression

    from runtimes.sklearn import SklearnRuntime

    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0], "b": [1.0, 0.0, 3.0]})
    model = LinearRegression().fit(frame, [1.0, 2.0, 3.0])
    joblib.dump(model, tmp_path / "model.joblib")
    runtime = SklearnRuntime(ModelSettings(name="m", artifact=tmp_path,
                                           parameters={"content_type": "pd"}))
    runtime.load()  # undeclared: one FP64 column per fitted feature name
    assert [(s.name, s.datatype, s.shape) for s in runtime.inputs] == [
        ("a", "FP64", (-1,)), ("b", "FP64", (-1,))]
    got = runtime.predict({"b": np.array([5.0]), "a": np.array([4.0])}, ["predict"])
    np.testing.assert_allclose(got["predict"], model.predict(pd.DataFrame({"a": [4.0],
                                                                           "b": [5.0]})))
    with pytest.raises(ModelLoadError, match=r"\['b'\]"):
        SklearnRuntime(ModelSettings(name="m", artifact=tmp_path, parameters={"content_type": "pd"},
                                     inputs=[{"name": "a", "datatype": "FP64"}])).load()
