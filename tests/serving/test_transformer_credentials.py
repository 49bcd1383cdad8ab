"""A transformer in front of a predictor that requires API keys: the client's credential is
passed on (REST headers and gRPC metadata, either predictor protocol), a missing or wrong one
is the predictor's 401 answered by the transformer as 401 / UNAUTHENTICATED (not 500), and
preprocess sees the request's headers (KServe's ``preprocess(payload, headers)``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtimes.transformer.client import _refusal
from serving.protocol.errors import PermissionDenied, Unauthenticated
from tests.conftest import ServerProcess
from tests.security.auth_support import KEYS, api_key, bearer, keys_file
from tests.transformer_support import copy_example, expected

pytestmark = pytest.mark.slow

LINES = ["-1,-1,0,0", "1,1,0,0"]
SEEN = '''
import threading
from typing import Any

from transformer import CsvToIris

_seen = threading.local()


class Seen(CsvToIris):
    """CsvToIris that answers which x-tenant header its preprocess saw."""

    outputs = [*CsvToIris.outputs,
               {"name": "tenant", "datatype": "BYTES", "shape": [-1], "content_type": "str"}]

    def preprocess(self, inputs: dict[str, Any], headers: dict[str, str]) -> Any:
        _seen.tenant = headers.get("x-tenant", "")
        return super().preprocess(inputs)

    def postprocess(self, result: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        out = super().postprocess(result)
        return {**out, "tenant": [_seen.tenant] * len(out["class_id"])}
'''


@pytest.fixture(scope="module")
def servers(model_zoo: dict, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, ServerProcess]]:
    folder = tmp_path_factory.mktemp("transformer-auth")
    code = copy_example(folder)
    (code / "seen.py").write_text(SEEN)
    keys = keys_file(folder / "keys")
    predictor = ServerProcess(model_zoo["root"] / "iris" / "1", "--name", "iris",
                              "--api-keys-file", str(keys)).wait_ready()
    started = {"predictor": predictor}
    try:
        for protocol in ("v2", "grpc-v2"):
            port = predictor.grpc_port if protocol == "grpc-v2" else predictor.http_port
            started[protocol] = ServerProcess(
                code, "--model-class", "seen:Seen", "--name", "iris", "--predictor-protocol",
                protocol, "--transformer-for", f"127.0.0.1:{port}", "--predictor-timeout", "5")
        for proc in started.values():
            proc.wait_ready()
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def _v2(server: ServerProcess, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/iris/infer", timeout=10, headers=headers, json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(LINES)], "data": LINES}]})


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
@pytest.mark.parametrize("credential", [api_key("alice"), bearer("bob")])
def test_client_credential_reaches_the_predictor(servers, model_zoo, protocol, credential):
    answer = _v2(servers[protocol], {**credential, "X-Tenant": "acme"})
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    want = expected(model_zoo["root"] / "iris" / "1", LINES)
    assert outputs["class_id"] == want["class_id"] and outputs["species"] == want["species"]
    assert outputs["tenant"] == ["acme", "acme"]  # preprocess saw the request's header


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
def test_no_or_wrong_key_is_401_from_the_transformer(servers, protocol):
    for headers in ({}, {"x-api-key": "tnt_not_a_key_at_all_0123456789abcdef"}):
        answer = _v2(servers[protocol], headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"].startswith("predictor"), answer.text
    # the predictor itself refused: it counted the refusals, the key never logged
    assert KEYS["alice"] not in servers[protocol].log()


def test_grpc_client_metadata_is_passed_on(servers, model_zoo):
    client = grpcclient.InferenceServerClient(servers["v2"].grpc_url)
    text = grpcclient.InferInput("text", [len(LINES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in LINES], dtype=object))
    result = client.infer("iris", [text], headers={**api_key("alice"), "x-tenant": "grpc"},
                          client_timeout=10)
    want = expected(model_zoo["root"] / "iris" / "1", LINES)
    assert result.as_numpy("class_id").tolist() == want["class_id"]
    assert [t.decode() for t in result.as_numpy("tenant")] == ["grpc", "grpc"]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [text], client_timeout=10)
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"


def test_refusals_keep_their_kind():
    assert isinstance(_refusal(401, b'{"error": "no credential"}'), Unauthenticated)
    assert isinstance(_refusal(403, b'{"error": "not allowed"}'), PermissionDenied)
    assert str(_refusal(403, b'{"error": "not allowed"}')) == "predictor answered 403: not allowed"
