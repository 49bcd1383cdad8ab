"""Authentication on the model server, with real clients: raw HTTP on the fast path (a POST
with Content-Length, claimed before ASGI) and on uvicorn's path (chunked), pipelined; httpx,
curl, tritonclient http and grpc with headers, grpc channels with metadata, on both gRPC
engines; API keys (file and variable; rotation by rewriting the file), JWTs against a JWKS file
and a JWKS URL (rotation at the issuer), scopes separating inference from the repository API,
open probes and /metrics, and refusals that never echo a key.

Two servers for the module, started together: ``files`` (threaded gRPC engine, keys file,
JWKS file, no leeway) and ``url`` (aio engine, keys in TURNOUT_API_KEYS, JWKS over HTTP).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from serving.protocol import proto
from tests.security.auth_support import (
    KEYS,
    ROW,
    JwksServer,
    Server,
    Signer,
    api_key,
    bearer,
    echo_models,
    eventually,
    keys_file,
    post,
    raw_http,
    sha,
    write_jwks,
)

SERVICE = "/inference.GRPCInferenceService/"
REALM = 'Bearer realm="turnout"'
INVALID = 'Bearer realm="turnout", error="invalid_token"'
BODY = orjson.dumps(ROW)


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {"rsa": Signer("rsa-1"), "ec": Signer("ec-1", "EC"), "next": Signer("rsa-2")}


@pytest.fixture(scope="module")
def jwks_server(signers: dict[str, Signer]) -> Iterator[JwksServer]:
    server = JwksServer(signers["ec"])
    yield server
    server.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, signers: dict[str, Signer],
            jwks_server: JwksServer) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("auth-server")
    root = echo_models(tmp / "models")
    keys = keys_file(tmp / "api-keys")
    jwks = write_jwks(tmp / "jwks.json", signers["rsa"], signers["ec"])
    entries = f"alice:{sha(KEYS['alice'])} ops:inference,management:{sha(KEYS['ops'])}"
    started = {
        "files": Server(root, tmp, "--api-keys-file", str(keys), "--jwks", str(jwks),
                        "--jwt-issuer", "https://issuer.test", "--jwt-audience", "turnout-tests",
                        "--jwt-leeway", "0"),
        "url": Server(root, tmp, "--grpc-engine", "aio", "--jwks", jwks_server.url,
                      "--jwt-issuer", "https://issuer.test", "--jwt-audience", "turnout-tests",
                      env={"TURNOUT_API_KEYS": entries}),
    }
    started["files"].keys_path = keys  # type: ignore[attr-defined]
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def model_requests(server: Server, model: str, protocol: str = "rest") -> float:
    """turnout_requests_total of ``model`` (every status) as the server reports it."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "turnout_requests_total" and sample.labels["model"] == model
               and sample.labels["protocol"] == protocol)


def outputs(body: bytes) -> list[float]:
    return orjson.loads(body)["outputs"][0]["data"]


# What each model answers for ROW: ``m`` echoes, ``slow`` doubles (tests/plugins).
ANSWER = {"m": [1.5, -2.0], "slow": [3.0, -4.0]}


# -- open ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["files", "url"])
def test_probes_and_metrics_need_no_credential(servers: dict[str, Server], name: str) -> None:
    server = servers[name]
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/").json() == {"status": "alive"}
    assert "turnout_requests_total" in httpx.get(f"{server.url}/metrics").text
    with grpc.insecure_channel(server.grpc_url) as channel:
        live = channel.unary_unary(SERVICE + "ServerLive",
                                   request_serializer=proto.ServerLiveRequest.SerializeToString,
                                   response_deserializer=proto.ServerLiveResponse.FromString)
        assert live(proto.ServerLiveRequest(), timeout=5).live is True
        ready = channel.unary_unary(SERVICE + "ServerReady",
                                    request_serializer=proto.ServerReadyRequest.SerializeToString,
                                    response_deserializer=proto.ServerReadyResponse.FromString)
        assert ready(proto.ServerReadyRequest(), timeout=5).ready is True
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


# -- REST: the fast path and uvicorn's path alike ---------------------------------------------

@pytest.mark.parametrize("model", ["m", "slow"])  # inline (answered in the callback), thread
def test_inference_needs_a_key_on_both_http_paths(servers: dict[str, Server], model: str) -> None:
    server = servers["files"]
    path = f"/v2/models/{model}/infer"
    before = model_requests(server, model)
    for chunked in (False, True):  # Content-Length: the fast path claims it; chunked: ASGI
        (status, headers, body), = raw_http(server.http_port, post(path, BODY, chunked=chunked))
        assert (status, headers["www-authenticate"]) == (401, REALM)
        assert orjson.loads(body) == {"error": "credentials required: send Authorization: "
                                      "Bearer <key or token> or x-api-key: <key>"}
        (status, headers, body), = raw_http(server.http_port, post(
            path, BODY, {"x-api-key": "tnt_wrong_key_presented_here"}, chunked=chunked))
        assert (status, headers["www-authenticate"]) == (401, INVALID)
        assert b"tnt_wrong_key_presented_here" not in body
        for credential in (bearer("alice"), api_key("bob")):
            (status, _, body), = raw_http(server.http_port, post(path, BODY, credential,
                                                                 chunked=chunked))
            assert status == 200 and outputs(body) == ANSWER[model]
    # Refused requests never reached the model: only the 4 accepted ones are counted.
    assert model_requests(server, model) - before == 4
    assert "tnt_wrong_key_presented_here" not in server.log()


def test_pipelined_refusals_keep_their_place_in_order(servers: dict[str, Server]) -> None:
    """Accepted requests answered on the fast path and refused ones answered on uvicorn's path
    come back in request order on one keep-alive connection."""
    server = servers["files"]
    requests = [post("/v2/models/m/infer", BODY, bearer("alice")),
                post("/v2/models/m/infer", BODY),
                post("/v2/models/slow/infer", BODY, api_key("alice")),
                post("/v2/models/m/infer", BODY, {"authorization": "Basic YWxpY2U6eA=="}),
                post("/v2/models/m/infer", BODY, bearer("bob"), chunked=True),
                post("/v2/repository/index", b"{}", api_key("alice")),
                post("/v2/models/m/infer", BODY, api_key("bob"))]
    answers = raw_http(server.http_port, b"".join(requests), responses=len(requests))
    assert [status for status, _, _ in answers] == [200, 401, 200, 401, 200, 403, 200]
    assert orjson.loads(answers[3][2]) == {
        "error": "unsupported Authorization scheme: send Bearer <key or token>"}
    assert answers[5][1]["www-authenticate"] == \
        'Bearer realm="turnout", error="insufficient_scope", scope="management"'


def test_v1_metadata_and_model_readiness_need_inference(servers: dict[str, Server]) -> None:
    url = servers["url"].url
    v1 = {"instances": [[1.0, 2.0]]}
    for method, path in (("GET", "/v2"), ("GET", "/v2/models/m"), ("GET", "/v2/models/m/ready"),
                         ("GET", "/v1/models"), ("GET", "/v1/models/m"),
                         ("POST", "/v1/models/m:predict"), ("GET", "/no/such/path")):
        refused = httpx.request(method, url + path, json=v1 if method == "POST" else None)
        assert refused.status_code == 401, path
        accepted = httpx.request(method, url + path, json=v1 if method == "POST" else None,
                                 headers=bearer("alice"))
        assert accepted.status_code == (404 if path == "/no/such/path" else 200), path
    assert httpx.post(f"{url}/v1/models/m:predict", json=v1, headers=api_key("ops")).json() == \
        {"predictions": [[1.0, 2.0]]}


def test_curl_with_and_without_a_key(servers: dict[str, Server]) -> None:
    url = f"{servers['url'].url}/v2/models/m/infer"
    base = ["curl", "-s", "-i", "-X", "POST", url, "-H", "content-type: application/json",
            "--data", BODY.decode()]
    refused = subprocess.run(base, capture_output=True, text=True, timeout=20, check=True).stdout
    assert refused.startswith("HTTP/1.1 401") and f"www-authenticate: {REALM}" in refused
    accepted = subprocess.run([*base, "-H", f"Authorization: Bearer {KEYS['alice']}"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
    assert accepted.startswith("HTTP/1.1 200") and '"data":[1.5,-2.0]' in accepted


# -- scopes: the repository API needs management ---------------------------------------------

def test_repository_api_needs_the_management_scope(servers: dict[str, Server]) -> None:
    url = servers["files"].url
    refused = httpx.post(f"{url}/v2/repository/index", headers=bearer("alice"))
    assert refused.status_code == 403
    assert refused.json() == {"error": "credential 'alice' lacks the 'management' scope"}
    assert refused.headers["www-authenticate"] == \
        'Bearer realm="turnout", error="insufficient_scope", scope="management"'
    assert httpx.post(f"{url}/v2/repository/models/slow/unload").status_code == 401
    index = httpx.post(f"{url}/v2/repository/index", headers=bearer("ops"))
    assert sorted(row["name"] for row in index.json()) == ["m", "slow"]
    assert httpx.post(f"{url}/v2/repository/models/slow/unload",
                      headers=api_key("ops")).status_code == 200
    assert httpx.get(f"{url}/v2/models/slow/ready", headers=api_key("ops")).status_code == 404
    assert httpx.post(f"{url}/v2/repository/models/slow/load",
                      headers=api_key("ops")).status_code == 200
    assert httpx.get(f"{url}/v2/models/slow/ready", headers=api_key("ops")).status_code == 200


# -- real clients: tritonclient http and grpc, grpc channels ---------------------------------

def test_tritonclient_http_with_headers(servers: dict[str, Server]) -> None:
    client = thttp.InferenceServerClient(servers["files"].url.removeprefix("http://"))
    x = thttp.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.5, -2.0]], dtype=np.float32))
    result = client.infer("m", [x], headers=bearer("alice"))
    assert result.as_numpy("y").tolist() == [[1.5, -2.0]]
    with pytest.raises(InferenceServerException, match="credentials required"):
        client.infer("m", [x])
    with pytest.raises(InferenceServerException, match="lacks the 'management' scope"):
        client.get_model_repository_index(headers=bearer("alice"))
    assert [m["name"] for m in client.get_model_repository_index(headers=bearer("ops"))] == \
        ["m", "slow"]
    client.close()


@pytest.mark.parametrize("name", ["files", "url"])  # threaded engine, aio engine
def test_tritonclient_grpc_with_headers(servers: dict[str, Server], name: str) -> None:
    client = tgrpc.InferenceServerClient(servers[name].grpc_url)
    x = tgrpc.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.5, -2.0]], dtype=np.float32))
    for model in ("m", "slow"):
        result = client.infer(model, [x], headers=bearer("alice"))
        assert result.as_numpy("y").tolist() == [ANSWER[model]]
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [x])
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "credentials required" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("m", [x], headers={"authorization": "Bearer tnt_not_a_key_we_know"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    assert caught.value.message() == "credentials not valid"
    assert client.is_model_ready("m", headers=api_key("alice")) is True
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("m")
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_repository_index(headers=api_key("alice"))
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    assert caught.value.message() == "credential 'alice' lacks the 'management' scope"
    index = client.get_model_repository_index(headers=api_key("ops"))
    assert sorted(m.name for m in index.models) == ["m", "slow"]
    assert client.is_server_live() and client.is_server_ready()  # open
    client.close()


@pytest.mark.parametrize("name", ["files", "url"])
def test_grpc_channel_metadata_and_refusals_before_decoding(servers: dict[str, Server],
                                                             name: str) -> None:
    with grpc.insecure_channel(servers[name].grpc_url) as channel:
        infer = channel.unary_unary(SERVICE + "ModelInfer")  # raw bytes both ways
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff not a protobuf message", timeout=5)  # never parsed: refused first
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\xff\xff not a protobuf message", timeout=5,
                  metadata=[("x-api-key", KEYS["alice"])])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # parsed once admitted
        request = proto.ModelInferRequest(model_name="m")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        tensor.contents.fp32_contents.extend([1.5, -2.0])
        answer = proto.ModelInferResponse.FromString(infer(
            request.SerializeToString(), timeout=5,
            metadata=[("authorization", f"Bearer {KEYS['alice']}")]))
        assert list(answer.outputs[0].contents.fp32_contents) == [1.5, -2.0]
        load = channel.unary_unary(SERVICE + "RepositoryModelLoad")
        with pytest.raises(grpc.RpcError) as caught:
            load(proto.RepositoryModelLoadRequest(model_name="m").SerializeToString(), timeout=5,
                 metadata=[("x-api-key", KEYS["alice"])])
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- JWT --------------------------------------------------------------------------------------

def test_jwt_from_a_jwks_file_rest_and_grpc(servers: dict[str, Server],
                                           signers: dict[str, Signer]) -> None:
    server = servers["files"]
    rsa, ec = signers["rsa"], signers["ec"]
    infer = f"{server.url}/v2/models/m/infer"
    for token in (rsa.token(), ec.token(scope=["inference"], scope_claim="scp")):
        answer = httpx.post(infer, json=ROW, headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [1.5, -2.0]
    refusals = {rsa.token(expires_in=-5): "token expired",  # --jwt-leeway 0
                rsa.token(iss="https://evil.test"): "token issuer not accepted",
                rsa.token(aud="someone-else"): "token audience not accepted",
                Signer("rsa-1").token(): "token signature not valid",
                rsa.token(kid="rsa-9"): "token signed by an unknown key"}
    for token, message in refusals.items():
        answer = httpx.post(infer, json=ROW, headers={"authorization": f"Bearer {token}"})
        assert (answer.status_code, answer.json(), answer.headers["www-authenticate"]) == (
            401, {"error": message}, INVALID)
        assert token not in answer.text
    no_scope = httpx.post(infer, json=ROW,
                          headers={"authorization": f"Bearer {rsa.token(scope=None)}"})
    assert (no_scope.status_code, no_scope.json()) == (
        403, {"error": "credential 'svc-a' lacks the 'inference' scope"})
    ops = {"authorization": f"Bearer {rsa.token(sub='deployer', scope='inference management')}"}
    assert httpx.post(f"{server.url}/v2/repository/index", headers=ops).status_code == 200
    client = tgrpc.InferenceServerClient(server.grpc_url)
    assert len(client.get_model_repository_index(headers=ops).models) == 2
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_repository_index(
            headers={"authorization": f"Bearer {rsa.token(expires_in=-5)}"})
    assert (caught.value.status(), caught.value.message()) == (
        "StatusCode.UNAUTHENTICATED", "token expired")
    client.close()


def test_jwks_url_fetched_in_the_background_follows_the_issuers_rotation(
        servers: dict[str, Server], signers: dict[str, Signer], jwks_server: JwksServer) -> None:
    server = servers["url"]
    infer = f"{server.url}/v2/models/m/infer"
    fetched = jwks_server.fetches
    assert fetched >= 1
    ec_token = signers["ec"].token()
    assert httpx.post(infer, json=ROW, headers={"authorization": f"Bearer {ec_token}"}) \
        .status_code == 200
    assert jwks_server.fetches == fetched  # requests read the keys fetched before
    jwks_server.doc = {"keys": [signers["ec"].jwk, signers["next"].jwk]}  # a new key appears
    new_token = {"authorization": f"Bearer {signers['next'].token(sub='svc-next')}"}
    first = httpx.post(infer, json=ROW, headers=new_token)  # unknown kid: answered at once,
    assert first.status_code == 401  # and the JWKS is fetched again in the background
    assert first.json() == {"error": "token signed by an unknown key"}
    eventually(lambda: httpx.post(infer, json=ROW, headers=new_token).status_code == 200,
               timeout=20, what="the new signing key fetched from the JWKS URL")
    assert jwks_server.fetches > fetched


# -- rotation of API keys ----------------------------------------------------------------------

def test_keys_rotate_by_rewriting_the_file_without_a_restart(servers: dict[str, Server]) -> None:
    server = servers["files"]
    pid = server.proc.pid
    infer = f"{server.url}/v2/models/m/infer"
    assert httpx.post(infer, json=ROW, headers=bearer("rotated")).status_code == 401
    keys_file(server.keys_path, ("alice", "ops", "rotated"))  # type: ignore[attr-defined]
    eventually(lambda: httpx.post(infer, json=ROW, headers=bearer("rotated")).status_code == 200,
               timeout=5, what="the new key accepted")
    assert httpx.post(infer, json=ROW, headers=bearer("bob")).status_code == 401  # rotated out
    assert httpx.post(infer, json=ROW, headers=bearer("alice")).status_code == 200
    with grpc.insecure_channel(server.grpc_url) as channel:  # gRPC reads the same file
        ready = channel.unary_unary(SERVICE + "ModelReady",
                                    request_serializer=proto.ModelReadyRequest.SerializeToString,
                                    response_deserializer=proto.ModelReadyResponse.FromString)
        assert ready(proto.ModelReadyRequest(name="m"), timeout=5,
                     metadata=[("x-api-key", KEYS["rotated"])]).ready is True
        with pytest.raises(grpc.RpcError) as caught:
            ready(proto.ModelReadyRequest(name="m"), timeout=5,
                  metadata=[("x-api-key", KEYS["bob"])])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    keys_file(server.keys_path)  # type: ignore[attr-defined]  (back as the module started)
    eventually(lambda: httpx.post(infer, json=ROW, headers=bearer("bob")).status_code == 200,
               timeout=5, what="bob back")
    assert server.proc.pid == pid and server.proc.poll() is None
    assert KEYS["rotated"] not in server.log() and KEYS["bob"] not in server.log()


def test_the_server_log_never_holds_a_key_or_token(servers: dict[str, Server]) -> None:
    for server in servers.values():
        log = server.log()
        assert "authentication:" in log
        assert not any(key in log for key in KEYS.values())
        assert "eyJ" not in log
