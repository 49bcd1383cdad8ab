"""The protobuf <-> internal translation, message by message, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from serving.protocol import codec_grpc as codec
from serving.protocol import proto
from serving.protocol.datatypes import serialize_bytes_tensor
from serving.protocol.errors import InvalidInput
from serving.protocol.types import (
    InferenceResponse,
    ModelMetadata,
    RepositoryEntry,
    Tensor,
    TensorSpec,
)

Input = proto.ModelInferRequest.InferInputTensor

# datatype -> (typed field, values sent, numpy dtype expected after decoding)
TYPED_CASES = {
    "BOOL": ("bool_contents", [True, False, True, True], np.bool_),
    "INT8": ("int_contents", [-128, 0, 5, 127], np.int8),
    "INT16": ("int_contents", [-32768, 1, 2, 32767], np.int16),
    "INT32": ("int_contents", [-(2**31), 1, 2, 2**31 - 1], np.int32),
    "INT64": ("int64_contents", [-(2**63), 1, 2, 2**63 - 1], np.int64),
    "UINT8": ("uint_contents", [0, 1, 2, 255], np.uint8),
    "UINT16": ("uint_contents", [0, 1, 2, 65535], np.uint16),
    "UINT32": ("uint_contents", [0, 1, 2, 2**32 - 1], np.uint32),
    "UINT64": ("uint64_contents", [0, 1, 2, 2**64 - 1], np.uint64),
    "FP32": ("fp32_contents", [0.5, -1.25, 3.0, 1e30], np.float32),
    "FP64": ("fp64_contents", [0.1, -1e300, 3.0, 2.5], np.float64),
    "BYTES": ("bytes_contents", [b"a", b"", b"\x00\xff", "é".encode()], object),
}


def _typed(datatype: str, shape: list[int], **contents: list) -> proto.ModelInferRequest:
    tensor = Input(name="t", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return proto.ModelInferRequest(model_name="m", inputs=[tensor])


@pytest.mark.parametrize("datatype", sorted(TYPED_CASES))
def test_typed_contents_decode_to_the_declared_dtype(datatype):
    field, values, dtype = TYPED_CASES[datatype]
    decoded = codec.request_to_internal(_typed(datatype, [2, 2], **{field: values})).inputs[0]
    assert decoded.datatype == datatype
    assert decoded.data.dtype == np.dtype(dtype)
    assert decoded.data.shape == (2, 2)
    assert decoded.data.reshape(-1).tolist() == [np.dtype(dtype).type(v) if dtype is not object
                                                 else v for v in values]


@pytest.mark.parametrize("datatype", sorted(TYPED_CASES))
def test_typed_response_round_trips_through_the_wire(datatype):
    field, values, dtype = TYPED_CASES[datatype]
    array = np.empty(4, dtype=object) if dtype is object else np.array(values, dtype=dtype)
    if dtype is object:
        array[:] = values
    response = InferenceResponse("m", [Tensor("out", datatype, array.reshape(2, 2))],
                                 model_version="3", id="r1")
    wire = proto.ModelInferResponse.FromString(
        codec.response_from_internal(response, raw=False).SerializeToString())
    out = wire.outputs[0]
    assert (wire.model_name, wire.model_version, wire.id) == ("m", "3", "r1")
    assert (out.name, out.datatype, list(out.shape)) == ("out", datatype, [2, 2])
    assert not wire.raw_output_contents
    assert [f.name for f, _ in out.contents.ListFields()] == [field]
    got = list(getattr(out.contents, field))
    assert got == (values if dtype is object else np.array(values, dtype=dtype).tolist())


def test_raw_inputs_are_numpy_views_of_the_message_buffers():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    labels = np.array([b"a", b"bb", b"ccc"], dtype=object)
    request = proto.ModelInferRequest(
        model_name="m", model_version="2", id="abc",
        inputs=[Input(name="x", datatype="FP32", shape=[3, 4]),
                Input(name="label", datatype="BYTES", shape=[3])],
        raw_input_contents=[x.tobytes(), serialize_bytes_tensor(labels)])
    internal = codec.request_to_internal(request)
    assert (internal.model_name, internal.model_version, internal.id) == ("m", "2", "abc")
    decoded_x, decoded_labels = (t.data for t in internal.inputs)
    np.testing.assert_array_equal(decoded_x, x)
    owner = decoded_x
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, bytes)  # np.frombuffer over the message's raw bytes: no copy
    assert decoded_labels.tolist() == [b"a", b"bb", b"ccc"]
    assert internal.outputs is None


def test_raw_response_holds_every_output_and_fp16_forces_raw():
    y = np.array([[1.5, 2.5]], dtype=np.float16)
    n = np.array([7], dtype=np.int64)
    response = InferenceResponse("m", [Tensor("y", "FP16", y), Tensor("n", "INT64", n)])
    message = codec.response_from_internal(response, raw=False)  # FP16 has no typed field
    assert list(message.raw_output_contents) == [y.tobytes(), n.tobytes()]
    assert not any(out.contents.ListFields() for out in message.outputs)
    assert message.id == "" and message.model_version == ""


ENCODED_CASES = {
    "one raw row": (InferenceResponse("mlp", [Tensor("y", "FP32", np.arange(10, dtype=np.float32)
                                                     .reshape(1, 10))], model_version="1"), True),
    "an id, two outputs, a long buffer": (InferenceResponse(
        "iris", [Tensor("label", "INT64", np.array([2, 0, 1])),
                 Tensor("probabilities", "FP64", np.linspace(0, 1, 3 * 200).reshape(3, 200))],
        model_version="7", id="req-42"), True),
    "BYTES and empty shapes": (InferenceResponse(
        "t", [Tensor("s", "BYTES", np.array([b"ab", "é".encode(), b""], dtype=object)),
              Tensor("e", "FP32", np.zeros((0, 3), dtype=np.float32))]), True),
    "FP16 forces raw": (InferenceResponse("h", [Tensor("y", "FP16", np.ones((2, 2), np.float16))],
                                          model_version="2"), False),
    "typed (not raw)": (InferenceResponse("m", [Tensor("y", "INT32", np.array([[1, -2]],
                                                                              np.int32))]), False),
    "with parameters": (InferenceResponse("m", [Tensor("y", "FP32", np.ones(2, np.float32),
                                                       {"binary_data_size": 8})],
                                          parameters={"k": "v"}), True),
}


@pytest.mark.parametrize("case", sorted(ENCODED_CASES))
def test_encoded_response_is_byte_for_byte_the_message_serialized(case):
    """encode_response builds raw answers from cached pieces: the bytes must be exactly what
    protobuf itself writes, every time (the second call reads the caches)."""
    response, raw = ENCODED_CASES[case]
    expected = codec.response_from_internal(response, raw=raw).SerializeToString()
    assert codec.encode_response(response, raw=raw) == expected
    assert codec.encode_response(response, raw=raw) == expected
    assert codec.serialize_response(expected) is expected  # bytes pass through the serializer
    message = proto.ModelInferResponse.FromString(expected)
    assert codec.serialize_response(message) == expected
    # every engine's ModelInfer serializer passes the bytes on; other RPCs serialize messages
    assert codec.response_serializer("ModelInfer", proto.ModelInferResponse)(expected) is expected
    live = proto.ServerLiveResponse(live=True)
    assert codec.response_serializer("ServerLive", proto.ServerLiveResponse)(live) == \
        live.SerializeToString()


def test_encoded_response_lengths_cross_every_varint_width():
    """Raw output records of 0 B to 2 MiB: one- to four-byte length prefixes."""
    for count in (0, 1, 31, 32, 4095, 4096, 524288):
        response = InferenceResponse("m", [Tensor("y", "FP32", np.full(count, 1.5, np.float32))])
        expected = codec.response_from_internal(response, raw=True).SerializeToString()
        assert codec.encode_response(response, raw=True) == expected, count


def test_parameters_of_every_kind_become_plain_values():
    request = proto.ModelInferRequest(model_name="m")
    request.parameters["b"].bool_param = True
    request.parameters["i"].int64_param = -(2**40)
    request.parameters["s"].string_param = "text"
    request.parameters["d"].double_param = 0.25
    request.parameters["u"].uint64_param = 2**64 - 1
    tensor = request.inputs.add(name="x", datatype="INT64", shape=[1])
    tensor.contents.int64_contents.append(1)
    tensor.parameters["binary_data_size"].int64_param = 8
    out = request.outputs.add(name="y")
    out.parameters["classification"].int64_param = 2
    internal = codec.request_to_internal(request)
    assert internal.parameters == {"b": True, "i": -(2**40), "s": "text", "d": 0.25,
                                   "u": 2**64 - 1}
    assert internal.inputs[0].parameters == {"binary_data_size": 8}
    assert internal.outputs[0].name == "y"
    assert internal.outputs[0].parameters == {"classification": 2}


def test_response_parameters_pick_the_field_from_the_python_type():
    params = {"b": True, "i": -3, "u": 2**64 - 1, "d": 0.5, "s": "x", "np": np.int32(4)}
    message = codec.response_from_internal(InferenceResponse("m", [], parameters=params),
                                           raw=True)
    kinds = {k: v.WhichOneof("parameter_choice") for k, v in message.parameters.items()}
    assert kinds == {"b": "bool_param", "i": "int64_param", "u": "uint64_param",
                     "d": "double_param", "s": "string_param", "np": "int64_param"}
    assert codec.parameters_to_dict(message.parameters, where="response") == params


def _mixed() -> proto.ModelInferRequest:
    request = _typed("FP32", [1, 2], fp32_contents=[1.0, 2.0])
    request.inputs.add(name="u", datatype="FP32", shape=[1])
    request.raw_input_contents.append(np.float32(1).tobytes())
    return request


def _raw_count() -> proto.ModelInferRequest:
    request = proto.ModelInferRequest(model_name="m", inputs=[
        Input(name="a", datatype="FP32", shape=[1]), Input(name="b", datatype="FP32", shape=[1])])
    request.raw_input_contents.append(np.float32(1).tobytes())
    return request


def _empty_parameter() -> proto.ModelInferRequest:
    request = _typed("FP32", [1], fp32_contents=[1.0])
    request.parameters["priority"].CopyFrom(proto.InferParameter())
    return request


def _raw_length() -> proto.ModelInferRequest:
    return proto.ModelInferRequest(model_name="m", inputs=[Input(name="x", datatype="FP32",
                                                                 shape=[2, 2])],
                                   raw_input_contents=[b"\x00" * 10])


@pytest.mark.parametrize(("build", "message"), [
    (_mixed, "input(s) ['t'] carry typed contents while the request also uses "
             "raw_input_contents"),
    (_raw_count, "request has 2 inputs but 1 raw_input_contents"),
    (_raw_length, "input 'x': 10 bytes of raw data do not match shape [2, 2] of FP32 "
                  "(16 bytes expected)"),
    (lambda: _typed("FP32", [2, 2], fp32_contents=[1.0, 2.0, 3.0]),
     "input 't': 3 values in fp32_contents do not match shape [2, 2] (4 expected)"),
    (lambda: _typed("FP32", [1], int64_contents=[1]),
     "input 't' is FP32 but carries int64_contents; FP32 data goes in fp32_contents"),
    (lambda: _typed("FP16", [1], fp32_contents=[1.0]),
     "input 't': FP16 has no typed contents field; send it in raw_input_contents"),
    (lambda: _typed("FP8", [1], fp32_contents=[1.0]), "unsupported datatype 'FP8'"),
    (lambda: _typed("FP32", [-1, 2], fp32_contents=[1.0, 2.0]),
     "input 't' has a negative dimension in shape [-1, 2]"),
    (lambda: _typed("FP32", [2**40, 2**40]), "input 't' has an impossibly large shape"),
    (lambda: _typed("INT8", [2], int_contents=[1, 300]),
     "input 't' holds values outside the range of INT8"),
    (_empty_parameter, "request parameter 'priority' has no value set"),
])
def test_malformed_requests_are_invalid_input_with_a_clear_message(build, message):
    with pytest.raises(InvalidInput) as caught:
        codec.request_to_internal(build())
    assert message in str(caught.value)


def test_repository_requests_accept_both_clients_field_layouts():
    triton = proto.RepositoryModelLoadRequest(repository_name="", model_name="iris")
    kserve_layout = proto.RepositoryModelLoadRequest(repository_name="iris")  # field 1
    assert codec.repository_model_name(triton) == "iris"
    assert codec.repository_model_name(kserve_layout) == "iris"
    unload = proto.RepositoryModelUnloadRequest(model_name="iris")
    unload.parameters["unload_dependents"].bool_param = False
    assert codec.repository_model_name(unload, ignored=frozenset({"unload_dependents"})) == "iris"
    with pytest.raises(InvalidInput, match=r"parameters \['unload_dependents'\] are not"):
        codec.repository_model_name(unload)
    with pytest.raises(InvalidInput, match="names no model"):
        codec.repository_model_name(proto.RepositoryModelLoadRequest())


def test_metadata_and_index_messages():
    meta = ModelMetadata("iris", ["1", "2"], "sklearn", [TensorSpec("x", "FP64", (-1, 4))],
                         [TensorSpec("y", "INT64", (-1,))])
    message = codec.model_metadata_to_proto(meta)
    assert list(message.versions) == ["1", "2"] and message.platform == "sklearn"
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("x", "FP64",
                                                                             [-1, 4])]
    entries = [RepositoryEntry("a", "1", "READY"), RepositoryEntry("b", "1", "UNAVAILABLE", "bad")]
    everything = codec.repository_index_to_proto(entries, ready_only=False)
    assert [(m.name, m.state, m.reason) for m in everything.models] == [
        ("a", "READY", ""), ("b", "UNAVAILABLE", "bad")]
    assert [m.name for m in codec.repository_index_to_proto(entries, ready_only=True).models
            ] == ["a"]
