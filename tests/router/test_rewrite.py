"""Reading and rewriting model names in protobuf bytes and V2 JSON, checked against protobuf."""

from __future__ import annotations

import orjson
import pytest

from router.rewrite import read_name_version, rename_v2_json, with_name_version
from serving.protocol import proto


def infer_request(name: str, version: str = "") -> bytes:
    msg = proto.ModelInferRequest(model_name=name, model_version=version, id="r1")
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.parameters["p"].int64_param = 3
    msg.raw_input_contents.append(b"\x00" * 8)
    msg.parameters["q"].double_param = 1.5
    return msg.SerializeToString()


@pytest.mark.parametrize("name,version", [("m", ""), ("iris", "2"), ("ü" * 200, "10")])
def test_read_name_version(name, version):
    assert read_name_version(infer_request(name, version)) == (name, version)


@pytest.mark.parametrize("new_name,new_version,expected", [
    ("other", None, ("other", "1")),
    (None, "7", ("m", "7")),
    ("other", "7", ("other", "7")),
    (None, None, ("m", "1")),
])
def test_with_name_version_is_what_protobuf_reads(new_name, new_version, expected):
    data = with_name_version(infer_request("m", "1"), new_name, new_version)
    parsed = proto.ModelInferRequest.FromString(data)
    assert (parsed.model_name, parsed.model_version) == expected
    assert read_name_version(data) == expected
    assert parsed.raw_input_contents[0] == b"\x00" * 8 and parsed.inputs[0].shape == [1, 2]


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x0a", b"\x0f"])
def test_malformed_messages_raise(data):
    with pytest.raises(ValueError):
        read_name_version(data)


def test_rename_v2_json_and_binary_header():
    body = orjson.dumps({"model_name": "iris_tree", "outputs": []})
    new, length = rename_v2_json(body, None, "iris")
    assert orjson.loads(new)["model_name"] == "iris" and length is None
    binary = body + b"\x01\x02"
    new, length = rename_v2_json(binary, len(body), "iris")
    assert orjson.loads(new[:length])["model_name"] == "iris" and new[length:] == b"\x01\x02"
