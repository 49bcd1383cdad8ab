"""The transformer's predictor client without a network: addresses, rotation, the REST V2
binary encoding both ways, and what preprocess may return."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from runtimes.transformer import as_tensors
from runtimes.transformer.client import Addresses, v2_request, v2_response


def test_fixed_addresses_rotate_and_normalise() -> None:
    addresses = Addresses(fixed=["http://a:1/", "b:2", "c"])
    assert addresses.current() == ["a:1", "b:2", "c:80"]
    starts = [addresses.rotation()[0] for _ in range(6)]
    assert starts == ["a:1", "b:2", "c:80", "a:1", "b:2", "c:80"]


@pytest.mark.parametrize("address", ["https://p:443", "grpcs://p:8081"])
def test_tls_addresses_need_tls_never_a_downgrade(address: str) -> None:
    with pytest.raises(ValueError, match="is TLS: give the CA"):
        Addresses(fixed=[address])
    assert Addresses(fixed=[address], tls=True).current() == [address.split("//")[1]]


def test_a_file_of_addresses_is_followed_as_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "hosts.json"
    http, grpc = Addresses(file=path), Addresses(file=path, grpc=True)
    assert http.rotation() == []  # no file yet: no predictor (503), not an error
    path.write_text(json.dumps({"http": ["http://127.0.0.1:1"], "grpc": ["127.0.0.1:2"]}))
    assert (http.current(), grpc.current()) == (["127.0.0.1:1"], ["127.0.0.1:2"])
    path.write_text(json.dumps({"http": ["http://127.0.0.1:3", "http://127.0.0.1:4"],
                                "grpc": []}))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new modification time
    assert http.current() == ["127.0.0.1:1"]  # checked at most once a second
    time.sleep(1.05)
    assert http.current() == ["127.0.0.1:3", "127.0.0.1:4"]
    path.write_text("{not json")
    os.utime(path, (time.time() + 10, time.time() + 10))
    time.sleep(1.05)
    assert http.current() == []  # a broken file: no predictor, never a crash


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array([[1, -2], [3, 4]], dtype=np.int64),
    np.array([b"a", b"bc", b""], dtype=object),
    np.array([True, False]),
])
def test_v2_binary_request_and_response_round_trip(array: np.ndarray) -> None:
    body, header_length = v2_request({"t": array})
    header = json.loads(body[:header_length])
    assert header["parameters"] == {"binary_data_output": True}
    (entry,) = header["inputs"]
    reply = json.dumps({"outputs": [{**entry, "name": "out"}]}).encode()
    decoded = v2_response(reply + body[header_length:], str(len(reply)))
    assert decoded["out"].tolist() == array.tolist()


def test_json_outputs_are_decoded_too() -> None:
    reply = json.dumps({"outputs": [
        {"name": "p", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
        {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}).encode()
    decoded = v2_response(reply, None)
    assert decoded["p"].dtype == np.float32 and decoded["p"].tolist() == [[1, 2], [3, 4]]
    assert decoded["s"].tolist() == ["x"]


@pytest.mark.parametrize("returned, names", [
    ({"a": [[1.0, 2.0]], "b": np.zeros((1, 3))}, ["a", "b"]),
    (np.ones((2, 4), dtype=np.float32), ["input-0"]),   # one array: a single-input predictor's
    (["x", "y"], ["input-0"]),
])
def test_what_preprocess_returns_becomes_named_tensors(returned: object, names: list) -> None:
    assert list(as_tensors(returned)) == names


@pytest.mark.parametrize("returned, problem", [({}, "no tensors"), (np.float32(1.0), "scalar")])
def test_what_preprocess_cannot_return(returned: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        as_tensors(returned)
