"""Property-based fuzzing of every client-facing codec: OIP V2 JSON, the binary tensor
extension, gRPC ModelInferRequest and KServe V1 — at the codec (many cases, fast) and through a
real model server's REST and gRPC endpoints (fewer cases).

The properties: bad input is a typed client error (``InvalidInput``: REST 4xx, gRPC
INVALID_ARGUMENT or another 4xx-like code), never a 5xx, INTERNAL or an unexpected exception;
the server keeps answering good requests; its memory stays bounded. Generation is derandomized
(the same cases every run, no example database), so CI is deterministic.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serving.protocol import codec_grpc, codec_v1, codec_v2, proto
from serving.protocol.errors import ErrorKind, TurnoutError
from serving.protocol.types import InferenceRequest

CODEC_CASES = {"v2_json": 300, "v2_binary": 200, "grpc": 250, "v1": 150}
SERVER_CASES = {"rest_v2": 120, "rest_binary": 60, "rest_v1": 60, "grpc": 120}
_RAN: dict[str, int] = {}  # cases actually run, per test


def _fuzz_settings(cases: int) -> settings:
    return settings(max_examples=cases, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _count(name: str) -> None:
    _RAN[name] = _RAN.get(name, 0) + 1


# -- strategies ------------------------------------------------------------------------------
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
datatypes = st.one_of(st.sampled_from(DATATYPES), st.sampled_from(["BF16", "fp32", "", "FP8",
                                                                   "STRING"]), st.text(max_size=8))
dims = st.one_of(st.integers(0, 4), st.integers(-3, 3), st.integers(0, 2**63 - 1),
                 st.sampled_from([2**31, 2**32 + 1, 2**62, 10**6]))
shapes = st.lists(dims, max_size=5)
scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=6), st.none())
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=20)
numbers = st.one_of(st.integers(-(2**65), 2**65), st.floats(allow_nan=False, width=32),
                    st.booleans())
flat_data = st.one_of(st.lists(numbers, max_size=12), st.lists(st.text(max_size=4), max_size=6))
nested_data = st.one_of(flat_data, st.lists(st.lists(numbers, max_size=4), max_size=4), json_values)
parameters = st.one_of(st.none(), st.dictionaries(st.sampled_from(
    ["binary_data_size", "content_type", "binary_data", "binary_data_output", "x"]),
    st.one_of(st.integers(-5, 64), st.text(max_size=5), st.booleans(), st.none()), max_size=3),
    json_values)


@st.composite
def v2_tensors(draw: st.DrawFn, *, binary: bool = False) -> Any:
    tensor: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        tensor["name"] = draw(st.one_of(st.sampled_from(["x", "input-0"]), st.text(max_size=6),
                                        st.integers()))
    if draw(st.integers(0, 9)):
        tensor["datatype"] = draw(datatypes)
    if draw(st.integers(0, 9)):
        tensor["shape"] = draw(st.one_of(shapes, json_values))
    if binary and draw(st.booleans()):
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-2, 40))}
    elif draw(st.integers(0, 3)) == 0:
        tensor["parameters"] = draw(parameters)
    if draw(st.integers(0, 9)):
        tensor["data"] = draw(nested_data)
    return tensor if draw(st.integers(0, 19)) else draw(json_values)


@st.composite
def v2_documents(draw: st.DrawFn, *, binary: bool = False) -> Any:
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        doc["inputs"] = draw(st.one_of(st.lists(v2_tensors(binary=binary), max_size=3),
                                       json_values))
    if draw(st.integers(0, 4)) == 0:
        doc["outputs"] = draw(st.one_of(st.lists(st.one_of(
            st.fixed_dictionaries({"name": st.text(max_size=4)}), json_values), max_size=2),
            json_values))
    if draw(st.integers(0, 4)) == 0:
        doc["id"] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        doc["parameters"] = draw(parameters)
    return doc if draw(st.integers(0, 19)) else draw(json_values)


# Near-valid requests: a good request for one of the fuzzed server's models with one thing
# changed, so generation also reaches validation and the models, not only the JSON parser.
GOOD_SHAPES = {"m": ("FP32", 2), "iris": ("FP64", 4), "echo_bytes": ("BYTES", 3)}
MUTATIONS = ["none", "datatype", "shape", "data", "name", "drop", "extra", "nan", "big"]


@st.composite
def near_valid(draw: st.DrawFn, *, binary: bool = False) -> tuple[str, dict[str, Any], bytes]:
    """(model, V2 document, binary tail) — valid for ``model`` unless mutated."""
    model = draw(st.sampled_from(sorted(GOOD_SHAPES)))
    datatype, width = GOOD_SHAPES[model]
    rows = draw(st.integers(1, 3))
    if datatype == "BYTES":
        data: list[Any] = draw(st.lists(st.text(max_size=4), min_size=rows * width,
                                        max_size=rows * width))
    else:
        data = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=rows * width,
                             max_size=rows * width))
    tensor: dict[str, Any] = {"name": "x", "shape": [rows, width], "datatype": datatype,
                              "data": data}
    tail = b""
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "datatype":
        tensor["datatype"] = draw(datatypes)
    elif mutation == "shape":
        tensor["shape"] = draw(shapes)
    elif mutation == "data":
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(json_values)
    elif mutation == "name":
        tensor["name"] = draw(st.text(max_size=5))
    elif mutation == "drop":
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    elif mutation == "extra":
        tensor[draw(st.text(max_size=4))] = draw(json_values)
    elif mutation == "nan" and datatype != "BYTES":
        data[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif mutation == "big" and datatype != "BYTES":
        data[0] = draw(st.sampled_from([1e39, 2**64, -(2**70)]))
    if binary and tensor.get("datatype") in ("FP32", "FP64") and isinstance(
            tensor.get("data"), list) and all(type(v) is float for v in tensor["data"]) \
            and draw(st.booleans()):
        array = np.asarray(tensor.pop("data"), dtype=np.float32 if tensor["datatype"] == "FP32"
                           else np.float64)
        tail = array.tobytes()
        if draw(st.integers(0, 3)) == 0:
            tail = tail[:draw(st.integers(0, len(tail)))]
        tensor["parameters"] = {"binary_data_size": len(tail)}
    return model, {"inputs": [tensor]}, tail


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()  # NaN/Infinity: not JSON, still sent


@st.composite
def v2_bodies(draw: st.DrawFn) -> bytes:
    """A JSON body: generated documents, mutated good ones, or raw bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind >= 6:
        return _dumps(draw(near_valid())[1])
    body = _dumps(draw(v2_documents()))
    if kind == 1 and body:  # flip, cut or splice bytes of a document
        cut = draw(st.integers(0, len(body)))
        return body[:cut] + draw(st.binary(max_size=8)) + body[cut + draw(st.integers(0, 4)):]
    return body


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A JSON header + binary tail, with a header length that may not fit."""
    if draw(st.booleans()):
        _, doc, tail = draw(near_valid(binary=True))
        header = _dumps(doc)
        length = draw(st.one_of(st.just(len(header)), st.just(len(header)),
                                st.integers(-3, len(header) + 3)))
        return header + tail, length
    header = _dumps(draw(v2_documents(binary=True)))
    tail = draw(st.one_of(st.binary(max_size=64), st.builds(
        lambda n, v: struct.pack(f"<{n}f", *([v] * n)), st.integers(0, 8), st.floats(width=32)),
        st.builds(lambda s: struct.pack("<I", len(s)) + s, st.binary(max_size=10))))
    length = draw(st.one_of(st.just(len(header)), st.integers(-3, len(header) + len(tail) + 3),
                            st.none()))
    return header + tail, length


@st.composite
def infer_requests(draw: st.DrawFn) -> bytes:
    """Serialized ModelInferRequests, or bytes that are not one."""
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(max_size=120))
    if kind >= 5:  # near-valid: one of the server's models, raw or typed, maybe mutated
        model, doc, _ = draw(near_valid())
        request = proto.ModelInferRequest(model_name=model)
        item = doc["inputs"][0]
        tensor = request.inputs.add(name=str(item.get("name", "")),
                                    datatype=str(item.get("datatype", "")))
        shape = item.get("shape")
        if isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**63 for d in shape):
            tensor.shape.extend(shape)
        data = item.get("data")
        if isinstance(data, list) and all(type(v) is float for v in data):
            if draw(st.booleans()):
                request.raw_input_contents.append(np.asarray(data, dtype=np.float32 if (
                    tensor.datatype != "FP64") else np.float64).tobytes())
            elif tensor.datatype == "FP64":
                tensor.contents.fp64_contents.extend(data)
            else:
                tensor.contents.fp32_contents.extend(data)
        elif isinstance(data, list) and all(type(v) is str for v in data):
            tensor.contents.bytes_contents.extend(v.encode() for v in data)
        return request.SerializeToString()
    request = proto.ModelInferRequest(
        model_name=draw(st.sampled_from(["m", "echo_bytes", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "2", "x"])),
        id=draw(st.text(max_size=6)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(name=draw(st.sampled_from(["x", "", "y"])),
                                    datatype=draw(datatypes),
                                    shape=draw(st.lists(st.integers(-2, 2**62), max_size=4)))
        contents = tensor.contents
        field = draw(st.sampled_from(["bool_contents", "int_contents", "int64_contents",
                                      "uint_contents", "uint64_contents", "fp32_contents",
                                      "fp64_contents", "bytes_contents", None]))
        if field == "bool_contents":
            contents.bool_contents.extend(draw(st.lists(st.booleans(), max_size=6)))
        elif field in ("int_contents", "uint_contents"):
            low, high = (-(2**31), 2**31 - 1) if field == "int_contents" else (0, 2**32 - 1)
            getattr(contents, field).extend(draw(st.lists(st.integers(low, high), max_size=6)))
        elif field == "int64_contents":
            contents.int64_contents.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1),
                                                         max_size=6)))
        elif field == "uint64_contents":
            contents.uint64_contents.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=6)))
        elif field in ("fp32_contents", "fp64_contents"):
            getattr(contents, field).extend(draw(st.lists(st.floats(width=32), max_size=6)))
        elif field == "bytes_contents":
            contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=5), max_size=4)))
        if draw(st.integers(0, 5)) == 0:
            tensor.parameters["content_type"].string_param = draw(st.text(max_size=5))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=40)))
    if draw(st.integers(0, 5)) == 0:
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    if draw(st.integers(0, 5)) == 0:
        request.outputs.add(name=draw(st.text(max_size=4)))
    if draw(st.integers(0, 6)) == 0:
        request.parameters["binary_data_output"].bool_param = True
    if draw(st.integers(0, 6)) == 0:
        request.parameters["empty"].Clear()  # a parameter with no value set
    data = request.SerializeToString()
    if draw(st.integers(0, 6)) == 0 and data:  # damage the encoding
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=6)) + data[cut + draw(st.integers(0, 3)):]
    return data


@st.composite
def v1_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=100))
    key = draw(st.sampled_from(["instances", "instances", "inputs", "instance"]))
    width = draw(st.sampled_from([2, 4]))
    rows = draw(st.one_of(
        st.lists(st.lists(st.floats(-1e3, 1e3), min_size=width, max_size=width), min_size=1,
                 max_size=4),                                             # the right shape
        st.lists(st.lists(numbers, min_size=4, max_size=4), max_size=4),
        st.lists(st.lists(numbers, max_size=5), max_size=4),               # ragged
        st.lists(st.text(max_size=4), max_size=4),
        st.lists(st.lists(st.lists(numbers, max_size=2), max_size=2), max_size=2),
        json_values))
    doc: Any = {key: rows}
    if kind == 1:
        doc = draw(json_values)
    return _dumps(doc)


# -- the properties at the codec --------------------------------------------------------------
def _client_error(call: Any) -> InferenceRequest | None:
    """``call()``'s request, or None when it raised a client error; anything else fails."""
    try:
        request = call()
    except TurnoutError as err:
        event("refused")
        assert err.kind is ErrorKind.INVALID, (err.kind, str(err))
        assert 400 <= err.http_status < 500 and err.grpc_code == "INVALID_ARGUMENT"
        assert str(err) and len(str(err)) < 1100
        return None
    event("decoded")
    return request


def _well_formed(request: InferenceRequest | None) -> None:
    if request is None:
        return
    for tensor in request.inputs:
        assert isinstance(tensor.data, np.ndarray)
        assert tensor.data.size == math.prod(tensor.data.shape)


@_fuzz_settings(CODEC_CASES["v2_json"])
@given(v2_bodies())
def test_v2_json_codec(body: bytes) -> None:
    _count("v2_json")
    _well_formed(_client_error(lambda: codec_v2.request_to_internal(
        body, header_length=None, model_name="m", model_version=None)))


@_fuzz_settings(CODEC_CASES["v2_binary"])
@given(binary_bodies())
def test_v2_binary_extension_codec(case: tuple[bytes, int | None]) -> None:
    _count("v2_binary")
    body, length = case
    _well_formed(_client_error(lambda: codec_v2.request_to_internal(
        body, header_length=length, model_name="m", model_version=None)))


_parse_infer = codec_grpc.lenient_parser(proto.ModelInferRequest)


@_fuzz_settings(CODEC_CASES["grpc"])
@given(infer_requests())
def test_grpc_model_infer_codec(data: bytes) -> None:
    _count("grpc")
    message = _parse_infer(data)
    if type(message) is codec_grpc.Undecodable:
        assert message.error.kind is ErrorKind.INVALID
        return
    _well_formed(_client_error(lambda: codec_grpc.request_to_internal(message)))


@_fuzz_settings(CODEC_CASES["v1"])
@given(v1_bodies())
def test_v1_codec(body: bytes) -> None:
    _count("v1")
    _well_formed(_client_error(lambda: codec_v1.request_to_internal(body, model_name="m")))


# -- the properties through a real server -------------------------------------------------------
@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from hostile_support import ServerProcess

    root = tmp_path_factory.mktemp("fuzz") / "models"
    for name, datatype, shape in (("m", "FP32", [-1, 2]), ("echo_bytes", "BYTES", [-1, -1]),
                                  ("iris", "FP64", [-1, 4])):
        (root / name).mkdir(parents=True)
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump({
            "runtime": "turnout_test_runtimes:Echo",
            "inputs": [{"name": "x", "datatype": datatype, "shape": shape}]}))
    server = ServerProcess(root, "--max-payload-bytes", str(1 << 20))
    try:
        server.wait_ready()
        server.rss_before = _rss(server.proc.pid)
        yield server
    finally:
        server.stop()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def http(fuzzed_server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzzed_server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def infer_stub(fuzzed_server: Any) -> Iterator[Any]:
    with grpc.insecure_channel(fuzzed_server.grpc_url) as channel:
        yield channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                  request_serializer=lambda data: data,
                                  response_deserializer=lambda data: data)


def _rest_refused_cleanly(reply: httpx.Response) -> None:
    event(f"HTTP {reply.status_code}")
    assert reply.status_code < 500, (reply.status_code, reply.text[:300])
    if reply.status_code >= 400:
        assert set(reply.json()) == {"error"}, reply.text[:300]


MODELS = st.sampled_from(["m", "echo_bytes", "iris", "nope"])


@_fuzz_settings(SERVER_CASES["rest_v2"])
@given(case=st.one_of(near_valid().map(lambda c: (c[0], _dumps(c[1]))),
                      st.tuples(MODELS, v2_bodies())))
def test_rest_v2_json_endpoint(http: httpx.Client, case: tuple[str, bytes]) -> None:
    _count("rest_v2")
    model, body = case
    _rest_refused_cleanly(http.post(f"/v2/models/{model}/infer", content=body,
                                    headers={"content-type": "application/json"}))


@_fuzz_settings(SERVER_CASES["rest_binary"])
@given(model=st.sampled_from(["m", "iris", "echo_bytes", "nope"]), case=binary_bodies())
def test_rest_binary_extension_endpoint(http: httpx.Client, model: str,
                                        case: tuple[bytes, int | None]) -> None:
    _count("rest_binary")
    body, length = case
    headers = {"content-type": "application/octet-stream"}
    if length is not None:
        headers["inference-header-content-length"] = str(length)
    _rest_refused_cleanly(http.post(f"/v2/models/{model}/infer", content=body, headers=headers))


v1_near_valid = st.sampled_from([("m", 2), ("iris", 4)]).flatmap(lambda mw: st.tuples(
    st.just(mw[0]), st.lists(st.lists(st.floats(-1e3, 1e3), min_size=mw[1], max_size=mw[1]),
                             min_size=1, max_size=3).map(lambda rows: _dumps({"instances": rows}))))


@_fuzz_settings(SERVER_CASES["rest_v1"])
@given(case=st.one_of(v1_near_valid, st.tuples(
    st.sampled_from(["m", "iris", "echo_bytes", "nope"]), v1_bodies())))
def test_rest_v1_endpoint(http: httpx.Client, case: tuple[str, bytes]) -> None:
    _count("rest_v1")
    model, body = case
    _rest_refused_cleanly(http.post(f"/v1/models/{model}:predict", content=body))


# Codes a client error may have on gRPC (none of them a server fault).
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.RESOURCE_EXHAUSTED}


@_fuzz_settings(SERVER_CASES["grpc"])
@given(data=infer_requests())
def test_grpc_model_infer_endpoint(infer_stub: Any, data: bytes) -> None:
    _count("grpc_server")
    try:
        infer_stub(data, timeout=30)
        event("OK")
    except grpc.RpcError as err:
        event(str(err.code()))
        assert err.code() in CLIENT_CODES, (err.code(), err.details())
        assert len(err.details() or "") < 1100


def test_the_server_survived_with_bounded_memory(fuzzed_server: Any, http: httpx.Client,
                                                 infer_stub: Any) -> None:
    good = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    reply = http.post("/v2/models/m/infer", json=good)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [1.0, 2.0]
    request = proto.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1, 2])
    assert proto.ModelInferResponse.FromString(
        infer_stub(request.SerializeToString(), timeout=30)).outputs[0].name == "y"
    assert fuzzed_server.proc.poll() is None
    grown = _rss(fuzzed_server.proc.pid) - fuzzed_server.rss_before
    assert grown < 64 << 20, f"RSS grew {grown >> 20} MiB over the fuzz run"


def test_at_least_a_thousand_cases_per_run() -> None:
    planned = sum(CODEC_CASES.values()) + sum(SERVER_CASES.values())
    assert planned >= 1000
    if len(_RAN) == len(CODEC_CASES) + len(SERVER_CASES):  # the whole module ran
        print(f"fuzz cases run: {_RAN} = {sum(_RAN.values())}")
        assert sum(_RAN.values()) >= 1000, _RAN


# -- what fuzzing found (kept as plain regressions) --------------------------------------------
@pytest.mark.parametrize("body,error", [
    # an integer tensor with no data raised ValueError (min() of nothing): a 500
    (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [], "data": []}]}',
     "input 'x': 0 data elements do not match shape [] (1 expected)"),
    # integers out of a narrow type's range wrapped silently (INT8 300 became 44)
    (b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}',
     "input 'x': values out of range for INT8"),
    (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2], "data": [1, -1]}]}',
     "input 'x': values out of range for UINT8"),
])
def test_found_by_fuzzing(body: bytes, error: str) -> None:
    with pytest.raises(TurnoutError) as caught:
        codec_v2.request_to_internal(body, header_length=None, model_name="m",
                                     model_version=None)
    assert caught.value.kind is ErrorKind.INVALID and str(caught.value) == error


def test_empty_integer_data_of_an_empty_shape_is_fine() -> None:
    request = codec_v2.request_to_internal(
        b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [0, 2], "data": []}]}',
        header_length=None, model_name="m", model_version=None)
    assert request.inputs[0].data.shape == (0, 2) and request.inputs[0].data.dtype == np.int32
