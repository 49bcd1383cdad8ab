"""Request heads decoded once and kept by their bytes (serving/protocol/templates.py): a
repeated head gives the same request the full decode gives, and every other input still gets
the full decode's answer."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from serving.protocol import codec_grpc as codec
from serving.protocol import codec_v2, proto
from serving.protocol.errors import InvalidInput
from serving.protocol.templates import TemplateCache
from serving.protocol.types import InferenceRequest
from serving.server.validation import _all_finite

Input = proto.ModelInferRequest.InferInputTensor
reference_parse = codec.lenient_parser(proto.ModelInferRequest)


def _grpc_request(rows: int = 1, *, request_id: str = "", seed: int = 0,
                  outputs: tuple[str, ...] = (), parameters: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    message = proto.ModelInferRequest(model_name="mlp", model_version="2", id=request_id)
    message.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    message.inputs.add(name="mask", datatype="INT64", shape=[rows])
    message.raw_input_contents.append(rng.random((rows, 4), dtype=np.float32).tobytes())
    message.raw_input_contents.append(rng.integers(0, 9, rows, dtype=np.int64).tobytes())
    for name in outputs:
        message.outputs.add(name=name).parameters["binary_data"].bool_param = True
    if parameters:
        message.parameters["priority"].int64_param = 3
    return message.SerializeToString()


def _reference(data: bytes) -> InferenceRequest | type:
    """What the full decode makes of ``data``: the request, or the kind of its error."""
    message = reference_parse(data)
    if type(message) is codec.Undecodable:
        return codec.Undecodable
    try:
        return codec.request_to_internal(message)
    except InvalidInput:
        return InvalidInput


def _outcome(parse, data: bytes) -> InferenceRequest | type:
    result = parse(data)
    if type(result) is codec.Undecodable:
        return codec.Undecodable
    try:
        return codec.decoded_request(result)[0]
    except InvalidInput:
        return InvalidInput


def _same(got: InferenceRequest | type, want: InferenceRequest | type) -> None:
    if not isinstance(want, InferenceRequest):
        assert got is want
        return
    assert isinstance(got, InferenceRequest)
    assert (got.model_name, got.model_version, got.id, got.parameters) == \
        (want.model_name, want.model_version, want.id, want.parameters)
    assert [(o.name, o.parameters) for o in got.outputs or ()] == \
        [(o.name, o.parameters) for o in want.outputs or ()]
    assert len(got.inputs) == len(want.inputs)
    for mine, theirs in zip(got.inputs, want.inputs, strict=True):
        assert (mine.name, mine.datatype, mine.parameters) == \
            (theirs.name, theirs.datatype, theirs.parameters)
        assert mine.data.dtype == theirs.data.dtype and mine.data.shape == theirs.data.shape
        assert mine.data.tobytes() == theirs.data.tobytes()


# -- gRPC --------------------------------------------------------------------------------
def test_a_repeated_grpc_head_is_built_from_its_template() -> None:
    cache = TemplateCache()
    parse = codec.infer_parser(cache)
    first = parse(_grpc_request(seed=1, outputs=("y",), parameters=True))
    assert type(first) is codec.Decoded and len(cache) == 1
    for seed in (2, 3):  # new tensor bytes, same head: no new template, the bytes are new
        data = _grpc_request(seed=seed, outputs=("y",), parameters=True)
        decoded = parse(data)
        assert type(decoded) is codec.Decoded and decoded.raw and len(cache) == 1
        assert (decoded.model_name, decoded.model_version) == ("mlp", "2")
        _same(decoded.internal, _reference(data))


def test_each_grpc_call_keeps_its_own_id_and_its_own_objects() -> None:
    parse = codec.infer_parser()
    a = parse(_grpc_request(request_id="first", outputs=("y",)))
    b = parse(_grpc_request(request_id="second", seed=5, outputs=("y",)))
    c = parse(_grpc_request(seed=6, outputs=("y",)))
    assert (a.internal.id, b.internal.id, c.internal.id) == ("first", "second", None)
    # nothing shared that a handler could change for the next call
    assert b.internal.outputs[0].parameters is not c.internal.outputs[0].parameters
    assert b.internal.inputs[0].parameters is not c.internal.inputs[0].parameters
    b.internal.outputs[0].parameters["binary_data"] = False
    assert parse(_grpc_request(outputs=("y",))).internal.outputs[0].parameters == \
        {"binary_data": True}


def test_a_cached_grpc_head_with_wrong_sizes_gets_the_full_decodes_error() -> None:
    parse = codec.infer_parser()
    parse(_grpc_request())
    message = reference_parse(_grpc_request())
    message.raw_input_contents[0] = message.raw_input_contents[0][:-4]  # one float short
    result = parse(message.SerializeToString())
    assert type(result) is not codec.Decoded
    with pytest.raises(InvalidInput, match="16 bytes expected"):
        codec.decoded_request(result)


def test_a_cached_grpc_head_with_an_id_that_is_not_utf8_is_refused_as_before() -> None:
    parse = codec.infer_parser()
    good = _grpc_request(request_id="ab")
    parse(good)
    bad = good.replace(b"\x1a\x02ab", b"\x1a\x02\xff\xfe")
    assert bad != good
    assert type(parse(bad)) is codec.Undecodable
    assert _reference(bad) is codec.Undecodable


def test_grpc_heads_the_scanner_does_not_know_are_decoded_fully_and_not_kept() -> None:
    cache = TemplateCache()
    parse = codec.infer_parser(cache)
    data = _grpc_request()
    # a model name after the raw contents (protobuf allows any order), and an unknown field
    for odd in (data + b"\x0a\x03mlp", data + b"\x42\x01z"):
        _same(_outcome(parse, odd), _reference(odd))
    # typed contents: no raw bytes to take from a template
    typed = proto.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
    _same(_outcome(parse, typed.SerializeToString()), _reference(typed.SerializeToString()))
    assert len(cache) == 0


def test_bytes_inputs_are_never_kept() -> None:
    cache = TemplateCache()
    parse = codec.infer_parser(cache)
    message = proto.ModelInferRequest(model_name="m")
    message.inputs.add(name="s", datatype="BYTES", shape=[1])
    message.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    decoded = parse(message.SerializeToString())
    assert type(decoded) is codec.Decoded and decoded.internal.inputs[0].data[0] == b"hi"
    assert len(cache) == 0


def test_the_template_cache_is_bounded() -> None:
    cache = TemplateCache(max_entries=8, max_key_bytes=64)
    parse = codec.infer_parser(cache)
    for rows in range(1, 30):
        _same(_outcome(parse, _grpc_request(rows)), _reference(_grpc_request(rows)))
        assert len(cache) <= 8
    long_name = proto.ModelInferRequest(model_name="m" * 100)
    long_name.inputs.add(name="x", datatype="FP32", shape=[1])
    long_name.raw_input_contents.append(b"\0\0\0\0")
    cache_before = len(cache)
    parse(long_name.SerializeToString())
    assert len(cache) in (cache_before, 0)  # not kept (a full cache may have started over)
    assert all(len(key) <= 64 for key in cache._entries)


def test_mutated_grpc_requests_get_exactly_the_full_decodes_answer() -> None:
    """Hostile bytes: every mutation of a request whose head is cached decodes as the full
    decode does — the same request, the same refusal."""
    rng = random.Random(19)
    seeds = [_grpc_request(request_id="r1", outputs=("y",)), _grpc_request(3, parameters=True)]
    parse = codec.infer_parser()
    for data in seeds:
        parse(data)
    hits = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            at = rng.randrange(len(data))
            if kind < 0.5:
                data[at] = rng.randrange(256)
            elif kind < 0.75:
                del data[at:at + rng.randint(1, 8)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        data = bytes(data)
        got, want = _outcome(parse, data), _reference(data)
        _same(got, want)
        hits += isinstance(want, InferenceRequest)
    assert hits > 100  # the mutations also made valid requests, not only refusals


# -- REST binary -------------------------------------------------------------------------
def _rest_body(seed: int = 0, *, request_id: str | None = None,
               json_input: bool = False) -> tuple[bytes, int]:
    rng = np.random.default_rng(seed)
    x = rng.random((2, 3), dtype=np.float32)
    header: dict = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32",
                                "parameters": {"binary_data_size": x.nbytes}}],
                    "parameters": {"binary_data_output": True},
                    "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    if request_id is not None:
        header["id"] = request_id
    if json_input:
        header["inputs"].append({"name": "k", "shape": [2], "datatype": "INT32",
                                 "data": [int(v) for v in rng.integers(0, 5, 2)]})
    head = orjson.dumps(header)
    return head + x.tobytes(), len(head)


def _rest(body: bytes, length: int, cache: TemplateCache | None) -> InferenceRequest | type:
    try:
        return codec_v2.request_to_internal(body, header_length=length, model_name="m",
                                            model_version="1", templates=cache)
    except InvalidInput:
        return InvalidInput


def test_a_repeated_rest_header_is_built_from_its_template() -> None:
    cache = TemplateCache()
    first = _rest(*_rest_body(1, request_id="a"), cache)
    assert len(cache) == 1
    for seed in (2, 3):
        body, length = _rest_body(seed, request_id="a")
        got = _rest(body, length, cache)
        _same(got, _rest(body, length, None))
        assert not np.array_equal(got.inputs[0].data, first.inputs[0].data)
    assert len(cache) == 1 and got.id == "a" and got.model_version == "1"


def test_rest_headers_with_json_data_are_not_kept() -> None:
    cache = TemplateCache()
    for seed in range(3):
        body, length = _rest_body(seed, json_input=True)
        _same(_rest(body, length, cache), _rest(body, length, None))
    assert len(cache) == 0


def test_a_cached_rest_header_with_the_wrong_body_size_gets_the_full_decodes_error() -> None:
    cache = TemplateCache()
    body, length = _rest_body()
    _rest(body, length, cache)
    for wrong in (body[:-4], body + b"\0\0\0\0"):
        with pytest.raises(InvalidInput, match="binary"):
            codec_v2.request_to_internal(wrong, header_length=length, model_name="m",
                                         model_version="1", templates=cache)


def test_mutated_rest_bodies_get_exactly_the_full_decodes_answer() -> None:
    rng = random.Random(7)
    cache = TemplateCache()
    body, length = _rest_body()
    _rest(body, length, cache)
    for _ in range(2000):
        data = bytearray(body)
        at = rng.randrange(len(data))
        if rng.random() < 0.7:
            data[at] = rng.randrange(256)
        else:
            del data[at:at + rng.randint(1, 6)]
        cut = length + rng.choice((0, 0, 0, -1, 1))
        got, want = _rest(bytes(data), cut, cache), _rest(bytes(data), cut, None)
        _same(got, want)


# -- the non-finite check ----------------------------------------------------------------
@pytest.mark.parametrize("values, dtype", [
    ([[1.0, 2.0]], np.float32), ([[1.0, np.nan]], np.float32), ([np.inf, -np.inf], np.float64),
    ([3e38, 3e38], np.float32), ([3e38, np.nan], np.float32), ([60000, 60000], np.float16),
    ([60000, -np.inf], np.float16), ([], np.float32), ([-np.inf], np.float64)])
def test_the_one_reduction_finite_check_agrees_with_the_element_check(values, dtype) -> None:
    array = np.array(values, dtype=dtype)
    assert _all_finite(array) is bool(np.isfinite(array).all())
