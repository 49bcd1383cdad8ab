"""Authentication on the router, a real ``turnout router`` process with real clients: its
public REST port (the fast path and uvicorn's path), its gRPC edge (tritonclient, grpc
channels), per-service principals (``services[].auth``, graphs included), the admin API (its
token, even on loopback; a management key; /metrics open), and routes naming principals refused
by a router that authenticates no one.

The upstream model server authenticates too, with the same keys and JWKS: the router forwards
the client's credential, so a replica can check it again (and the router's health checks use
the open probes).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc
import yaml
from tritonclient.utils import InferenceServerException

from serving.protocol import proto
from tests.security.auth_support import (
    AUDIENCE,
    ISSUER,
    ROW,
    Child,
    Server,
    Signer,
    api_key,
    bearer,
    echo_models,
    free_port,
    keys_file,
    post,
    raw_http,
    write_jwks,
)

BODY = orjson.dumps(ROW)
REALM = 'Bearer realm="turnout"'


class Router(Child):
    def __init__(self, tmp: Path, routes: dict, *flags: str) -> None:
        self.http_port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.routes = tmp / f"routes-{self.http_port}.yaml"
        self.routes.write_text(yaml.safe_dump(routes))
        super().__init__(["router", "--config", str(self.routes), "--http-port",
                          str(self.http_port), "--grpc-port", str(self.grpc_port),
                          "--admin-port", str(self.admin_port), *flags],
                         tmp / f"router-{self.http_port}.log")

    def wait_ready(self) -> Router:
        self.wait_for(lambda: httpx.get(f"{self.url}/v2/health/ready").status_code == 200,
                      what="turnout router")
        return self


def routes(upstream: Server) -> dict:
    variant = {"name": "default", "weight": 1, "model": "m", "http": [upstream.url],
               "grpc": [upstream.grpc_url]}
    return {"upstream": {"health_check": {"interval_seconds": 0.5}},
            "services": [{"name": "m", "variants": [variant]},
                         {"name": "private", "variants": [variant],
                          "auth": {"principals": ["alice", "svc-a"]}}],
            "graphs": [{"name": "chain", "nodes": {"root": {"routerType": "Sequence", "steps": [
                {"serviceName": "m"}, {"serviceName": "private", "data": "$response"}]}}},
                       {"name": "open-chain", "nodes": {"root": {"routerType": "Sequence",
                                                                 "steps": [{"serviceName": "m"}]}}}]}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer("rsa-1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("auth-router")
    keys = keys_file(tmp / "api-keys")
    jwks = write_jwks(tmp / "jwks.json", signer)
    jwt_flags = ["--jwks", str(jwks), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]
    upstream = Server(echo_models(tmp / "models"), tmp, "--api-keys-file", str(keys), *jwt_flags)
    upstream.wait_ready()
    token_path = tmp / "admin" / "token"
    token_path.parent.mkdir()
    router = Router(tmp, routes(upstream), "--api-keys-file", str(keys), *jwt_flags,
                    "--admin-token-file", str(token_path))
    bare = Router(tmp, {"services": []})  # authenticates no one
    try:
        router.wait_ready()
        bare.wait_ready()
        yield {"router": router, "bare": bare, "upstream": upstream, "token": token_path,
               "tmp": tmp}
    finally:
        for child in (router, bare, upstream):
            child.stop()


def infer(url: str, name: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{name}/infer", json=ROW, headers=headers, timeout=10)


def test_probes_and_metrics_stay_open(setup: dict) -> None:
    router: Router = setup["router"]
    assert httpx.get(f"{router.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{router.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{router.url}/").json() == {"status": "alive"}
    assert "turnout_router_requests_total" in httpx.get(f"{router.url}/metrics").text
    assert httpx.get(f"{router.admin}/metrics").status_code != 401  # the admin's /metrics too
    client = tgrpc.InferenceServerClient(router.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    client.close()


def test_rest_needs_a_key_on_both_paths_and_services_admit_their_principals(setup: dict) -> None:
    router: Router = setup["router"]
    for chunked in (False, True):  # the fast path claims Content-Length POSTs; chunked: ASGI
        answers = raw_http(router.http_port, b"".join([
            post("/v2/models/m/infer", BODY, chunked=chunked),
            post("/v2/models/m/infer", BODY, api_key("bob"), chunked=chunked),
            post("/v2/models/private/infer", BODY, api_key("bob"), chunked=chunked),
            post("/v2/models/private/infer", BODY, bearer("alice"), chunked=chunked),
            post("/v1/models/private:predict", b'{"instances": [[1.5, -2.0]]}', api_key("bob"),
                 chunked=chunked),
            post("/v2/models/m/infer", BODY, {"x-api-key": "tnt_guess"}, chunked=chunked)]),
            responses=6)
        assert [status for status, _, _ in answers] == [401, 200, 403, 200, 403, 401]
        assert answers[0][1]["www-authenticate"] == REALM
        assert orjson.loads(answers[1][2])["outputs"][0]["data"] == [1.5, -2.0]
        assert answers[1][1]["x-turnout-variant"] == "default"
        assert orjson.loads(answers[2][2]) == {"error": "credential 'bob' may not call 'private'"}
        assert answers[2][1]["www-authenticate"] == \
            'Bearer realm="turnout", error="insufficient_scope", scope="inference"'
        assert orjson.loads(answers[3][2])["model_name"] == "private"
    assert b"tnt_guess" not in answers[5][2]


def test_graphs_admit_only_principals_of_every_service_they_call(setup: dict,
                                                                 signer: Signer) -> None:
    url = setup["router"].url
    assert infer(url, "chain", api_key("bob")).json() == {
        "error": "credential 'bob' may not call 'private'"}
    assert infer(url, "chain").status_code == 401
    assert infer(url, "chain", api_key("alice")).status_code == 200
    token = {"authorization": f"Bearer {signer.token(sub='svc-a')}"}
    assert infer(url, "chain", token).status_code == 200
    assert infer(url, "open-chain", api_key("bob")).status_code == 200


def test_model_metadata_and_lists_need_inference(setup: dict) -> None:
    url = setup["router"].url
    for path in ("/v2", "/v1/models", "/v2/models/m", "/v2/models/m/ready"):
        assert httpx.get(url + path).status_code == 401, path
        assert httpx.get(url + path, headers=api_key("bob")).status_code == 200, path
    assert httpx.get(f"{url}/v2/models/private/ready", headers=api_key("bob")).status_code == 403


def test_grpc_edge_authenticates_and_enforces_service_principals(setup: dict,
                                                                signer: Signer) -> None:
    router: Router = setup["router"]
    client = tgrpc.InferenceServerClient(router.grpc_url)
    x = tgrpc.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.5, -2.0]], dtype=np.float32))
    assert client.infer("m", [x], headers=api_key("bob")).as_numpy("y").tolist() == [[1.5, -2.0]]
    cases = [("m", None, "StatusCode.UNAUTHENTICATED", "credentials required: send "
              "Authorization: Bearer <key or token> or x-api-key: <key>"),
             ("m", {"authorization": "Bearer tnt_guess"}, "StatusCode.UNAUTHENTICATED",
              "credentials not valid"),
             ("private", api_key("bob"), "StatusCode.PERMISSION_DENIED",
              "credential 'bob' may not call 'private'"),
             ("chain", api_key("bob"), "StatusCode.PERMISSION_DENIED",
              "credential 'bob' may not call 'private'"),
             ("m", {"authorization": f"Bearer {signer.token(expires_in=-60)}"},
              "StatusCode.UNAUTHENTICATED", "token expired")]
    for model, headers, status, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [x], headers=headers)
        assert (caught.value.status(), caught.value.message()) == (status, message), model
    private = client.infer("private", [x], headers=bearer("alice")).get_response()
    assert private.model_name == "private"
    token = {"authorization": f"Bearer {signer.token(sub='svc-a')}"}
    assert client.infer("chain", [x], headers=token).as_numpy("y").tolist() == [[1.5, -2.0]]
    assert client.is_model_ready("m", headers=api_key("bob")) is True
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("private", headers=api_key("bob"))
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    client.close()
    with grpc.insecure_channel(router.grpc_url) as channel:  # refused before any byte is read
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                b"\xff garbage", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=proto.ServerReadyRequest.SerializeToString,
            response_deserializer=proto.ServerReadyResponse.FromString)
        assert ready(proto.ServerReadyRequest(), timeout=5).ready is True


def test_admin_api_needs_its_token_or_a_management_key(setup: dict) -> None:
    router: Router = setup["router"]
    token_path: Path = setup["token"]
    assert token_path.stat().st_mode & 0o777 == 0o600  # created by the router, owner only
    token = {"authorization": f"Bearer {token_path.read_text().strip()}"}
    refused = httpx.get(f"{router.admin}/config")
    assert (refused.status_code, refused.headers["www-authenticate"]) == (401, REALM)
    assert httpx.get(f"{router.admin}/status", headers=api_key("alice")).status_code == 403
    assert httpx.get(f"{router.admin}/config", headers={"authorization": "Bearer nope-nope-nope"}
                     ).status_code == 401
    config = httpx.get(f"{router.admin}/config", headers=token).json()
    assert [s["name"] for s in config["services"]] == ["m", "private"]
    assert config["services"][1]["auth"] == {"principals": ["alice", "svc-a"]}
    assert httpx.get(f"{router.admin}/status", headers=api_key("ops")).status_code == 200
    # bob is admitted to the private service by a management key's PUT, then removed again
    config["services"][1]["auth"]["principals"].append("bob")
    assert httpx.put(f"{router.admin}/config", content=orjson.dumps(config),
                     headers=api_key("ops")).json() == {"applied": True}
    assert infer(router.url, "private", api_key("bob")).status_code == 200
    assert httpx.post(f"{router.admin}/reload", headers=token).json() == {"applied": True}
    assert infer(router.url, "private", api_key("bob")).status_code == 403
    # the token file rotates like a keys file
    token_path.write_text("a-new-admin-token-0123456789")
    deadline = time.monotonic() + 5
    while httpx.get(f"{router.admin}/config", headers=token).status_code != 401:
        assert time.monotonic() < deadline, "old admin token still accepted"
        time.sleep(0.1)
    assert httpx.get(f"{router.admin}/config", headers={
        "authorization": "Bearer a-new-admin-token-0123456789"}).status_code == 200


def test_a_router_without_authentication_refuses_routes_naming_principals(setup: dict) -> None:
    bare: Router = setup["bare"]
    token = bare.routes.with_name(bare.routes.name + ".admin-token")  # the default place
    headers = {"authorization": f"Bearer {token.read_text()}"}
    assert httpx.get(f"{bare.admin}/config").status_code == 401  # no keys, still a token
    doc = {"services": [{"name": "p", "variants": [{"name": "v", "weight": 1,
                                                    "http": ["http://127.0.0.1:1"]}],
                         "auth": {"principals": ["alice"]}}]}
    refused = httpx.put(f"{bare.admin}/config", content=orjson.dumps(doc), headers=headers)
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        "services ['p'] admit only named principals (auth.principals), but this router "
        "authenticates no one: start it with --api-keys-file or --jwks")
    assert httpx.get(f"{bare.url}/v1/models").json() == {"models": []}  # nothing applied
    # and a routes file naming principals stops `turnout router` before it listens
    path = setup["tmp"] / "principals.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = subprocess.run([sys.executable, "-m", "serving.cli", "router", "--config", str(path),
                           "--http-port", str(free_port()), "--admin-port", "0",
                           "--grpc-port", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "authenticates no one: start it with --api-keys-file or --jwks" in done.stderr
