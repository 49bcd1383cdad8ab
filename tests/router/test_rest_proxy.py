"""REST through the router against real model servers: same answers as direct calls, splits
within binomial bounds, rules before weights, sticky keys, renamed models, edge limits."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

X = [[1.5, -2.0]]
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}
IRIS_X = [[0.3, -0.2, 1.4, 0.2], [2.0, 1.0, 0.1, -1.0], [-1.0, 0.5, 0.9, 0.0]]


def within_binomial(count: int, n: int, p: float, z: float = 4.5) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def routes(upstreams, *, weights=(1, 0), **extra):
    a1, a2, b = upstreams["a1"], upstreams["a2"], upstreams["b"]
    return {"services": [
        {"name": "m", "variants": [
            {"name": "default", "weight": weights[0], "http": [a1.url, a2.url],
             "grpc": [a1.grpc_url, a2.grpc_url]},
            {"name": "canary", "weight": weights[1], "http": [b.url], "grpc": [b.grpc_url]}],
         **extra},
        {"name": "iris", "variants": [
            {"name": "tree", "weight": 1, "model": "iris_tree", "http": [a1.url]},
            {"name": "logreg", "weight": 0, "model": "iris_logreg", "http": [b.url]}],
         "rules": [{"header": {"x-model": "logreg"}, "variant": "logreg"}]},
        {"name": "failing", "variants": [{"name": "default", "weight": 1, "http": [a1.url]}]},
    ]}


@pytest.fixture(scope="module")
def router(upstreams, tmp_path_factory, router_cls):
    r = router_cls(routes(upstreams, weights=(70, 30)), tmp_path_factory.mktemp("rest"))
    yield r
    r.stop()


def variant_of(y: list, x: list = X) -> str:
    if np.allclose(y, x):
        return "default"
    assert np.allclose(y, np.asarray(x) * 2)
    return "canary"


def test_v2_json_equals_direct_and_names_the_variant(router, upstreams):
    direct = httpx.post(f"{upstreams['a1'].url}/v2/models/m/infer", json=BODY)
    via = httpx.post(f"{router.url}/v2/models/m/infer", json=BODY,
                     headers={"x-experiment": "none", "x-request-id": "abc"})
    assert via.status_code == 200
    name = via.headers["x-turnout-variant"]
    assert name in ("default", "canary") and via.headers["x-request-id"] == "abc"
    if name == "default":
        assert via.json() == direct.json()
    assert variant_of(via.json()["outputs"][0]["data"]) == name


def test_binary_tensors_pass_through_with_tritonclient(router, upstreams):
    for url in (router.url, upstreams["a1"].url):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        tensor = triton.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.asarray(X, dtype=np.float32), binary_data=True)
        out = triton.InferRequestedOutput("y", binary_data=True)
        result = client.infer("m", [tensor], outputs=[out])
        y = result.as_numpy("y")
        assert y.dtype == np.float32 and y.shape == (1, 2)
        variant_of(y.tolist())
        assert result.get_response()["model_name"] == "m"
        client.close()


def test_v1_predict(router):
    resp = httpx.post(f"{router.url}/v1/models/m:predict", json={"instances": X})
    assert resp.status_code == 200
    assert variant_of(resp.json()["predictions"]) == resp.headers["x-turnout-variant"]
    meta = httpx.get(f"{router.url}/v1/models/m")
    assert meta.json() == {"name": "m", "ready": True}


def test_weighted_split_is_within_a_binomial_bound(router):
    n = 400

    client = httpx.Client(limits=httpx.Limits(max_connections=8))

    def one(_: int) -> str:
        resp = client.post(f"{router.url}/v2/models/m/infer", json=BODY)
        seen = variant_of(resp.json()["outputs"][0]["data"])
        assert seen == resp.headers["x-turnout-variant"]
        return seen

    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(one, range(n)))
    client.close()
    assert within_binomial(seen.count("canary"), n, 0.3), seen.count("canary")


def test_rules_beat_weights_and_cookies_match(upstreams, tmp_path, router_cls):
    r = router_cls(routes(upstreams, weights=(1, 0), rules=[
        {"header": {"x-experiment": "b"}, "variant": "canary"},
        {"cookie": {"beta": "1"}, "variant": "canary"}]), tmp_path, grpc=False)
    try:
        for headers, expected in [({"x-experiment": "b"}, "canary"), ({}, "default"),
                                  ({"cookie": "a=2; beta=1"}, "canary"),
                                  ({"cookie": "beta=0"}, "default")]:
            for _ in range(5):
                resp = httpx.post(f"{r.url}/v2/models/m/infer", json=BODY, headers=headers)
                assert variant_of(resp.json()["outputs"][0]["data"]) == expected
    finally:
        r.stop()


def test_sticky_sessions_survive_a_weight_change(upstreams, tmp_path, router_cls):
    r = router_cls(routes(upstreams, weights=(50, 50), sticky={"header": "x-user-id"}),
                     tmp_path, grpc=False)
    users = [f"user-{i}" for i in range(200)]

    def assignment() -> dict[str, str]:
        with httpx.Client() as client:
            return {u: variant_of(client.post(f"{r.url}/v2/models/m/infer", json=BODY,
                                              headers={"x-user-id": u}).json()["outputs"][0]["data"])
                    for u in users}

    try:
        first = assignment()
        assert assignment() == first  # the same key always lands on the same variant
        assert within_binomial(list(first.values()).count("canary"), len(users), 0.5)
        resp = httpx.put(f"{r.admin}/services/m/weights", json={"default": 30, "canary": 70},
                         headers=r.admin_headers)
        assert resp.status_code == 200, resp.text
        second = assignment()
        moved = [u for u in users if first[u] != second[u]]
        assert all(first[u] == "default" and second[u] == "canary" for u in moved)
        assert within_binomial(len(moved), len(users), 0.2)  # 50% → 30%: a fifth move
        assert assignment() == second
    finally:
        r.stop()


def test_renamed_models_answer_under_the_service_name(router, upstreams, model_zoo):
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64",
                        "data": sum(IRIS_X, [])}]}
    tree = httpx.post(f"{router.url}/v2/models/iris/infer", json=body).json()
    logreg = httpx.post(f"{router.url}/v2/models/iris/infer", json=body,
                        headers={"x-model": "logreg"}).json()
    assert tree["model_name"] == logreg["model_name"] == "iris"
    assert tree["outputs"][0]["data"] == model_zoo["iris_v1"].predict(np.asarray(IRIS_X)).tolist()
    assert logreg["outputs"][0]["data"] == model_zoo["iris_v2"].predict(
        np.asarray(IRIS_X)).tolist()
    meta = httpx.get(f"{router.url}/v2/models/iris").json()
    assert meta["name"] == "iris"


BAD_BODIES = [
    b"not json",
    b"[]",
    b"{}",
    b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1]}]}',
    b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}',
    b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "NOPE", "data": [1, 2]}]}',
    b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}',
    b'{"inputs": [{"name": "x", "shape": [0, 2], "datatype": "FP32", "data": []}]}',
    b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], '
    b'"outputs": [{"name": "nope"}]}',
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_bad_inputs_are_rejected_the_same_way(router, upstreams, body):
    direct = httpx.post(f"{upstreams['a1'].url}/v2/models/m/infer", content=body,
                        headers={"x-experiment": "none"})
    via = httpx.post(f"{router.url}/v2/models/m/infer", content=body)
    assert direct.status_code >= 400
    if via.headers["x-turnout-variant"] == "default":
        assert (via.status_code, via.json()) == (direct.status_code, direct.json())
    else:
        assert via.status_code == direct.status_code


GOOD = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'


# The router never decodes bodies and the model server checks the model before the body, so an
# unknown model is 404 with the same message whatever the body, malformed ones included.
@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v2/models/nope/infer", GOOD),
    ("POST", "/v2/models/nope/infer", b"not json"),
    ("POST", "/v2/models/nope/infer", b'{"inputs": [{"name": "x", "datatype": "NOPE"}]}'),
    ("POST", "/v1/models/nope:predict", b"{not json"),
    ("POST", "/v2/models/m/versions/9/infer", b"not json"),
    ("POST", "/v1/models/nope:predict", b'{"instances": [[1, 2]]}'),
    ("GET", "/v2/models/nope", b""),
    ("POST", "/v2/models/failing/infer",
     b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'),
    ("POST", "/v2/models/m/versions/9/infer",
     b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'),
    ("GET", "/v2/models/m/infer", b""),
    ("GET", "/v2/nothing/here", b""),
    ("POST", "/v1/models/m:explain", b"{}"),   # was 405 on the server, 404 on the router
    ("GET", "/v1/models/m:explain", b""),
])
def test_error_statuses_match_the_model_server(router, upstreams, method, path, body):
    same_id = {"x-request-id": "same-id"}  # a model's failure names the request id
    direct = httpx.request(method, f"{upstreams['a1'].url}{path}", content=body, headers=same_id)
    via = httpx.request(method, f"{router.url}{path}", content=body, headers=same_id)
    assert via.status_code == direct.status_code, (via.text, direct.text)
    assert "error" in via.json()
    if "nope" in path or "failing" in path or "explain" in path:
        assert via.json() == direct.json()


def test_payload_limit_is_enforced_at_the_edge(router):
    big = b"0" * (2 << 20)  # the test router allows 1 MiB
    resp = httpx.post(f"{router.url}/v2/models/m/infer", content=big)
    assert resp.status_code == 413 and "limit" in resp.json()["error"]


def test_router_health_and_metrics(router):
    def served() -> float:  # whichever variant earlier tests left the weight on
        return sum(router.sample("turnout_router_requests_total", service="m", variant=v,
                                 protocol="rest", code="200") for v in ("default", "canary"))

    before = served()
    assert httpx.post(f"{router.url}/v2/models/m/infer", json=BODY).status_code == 200
    assert httpx.post(f"{router.url}/v2/models/nope/infer", json=BODY).status_code == 404
    assert served() == before + 1
    assert httpx.get(f"{router.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{router.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{router.url}/v2").json()["name"] == "turnout-router"
    text = httpx.get(f"{router.url}/metrics").text
    assert 'turnout_router_requests_total{code="200",protocol="rest",service="m"' in text
    assert router.sample("turnout_router_requests_total", service="", variant="",
                         protocol="rest", code="404") >= 1


def test_kserve_v1_list_and_liveness_answer_like_a_model_server(router):
    listed = httpx.get(f"{router.url}/v1/models")
    # the services the router serves, sorted, as a KServe V1 server lists its models
    assert (listed.status_code, listed.json()) == (200, {"models": ["failing", "iris", "m"]})
    alive = httpx.get(f"{router.url}/")
    assert (alive.status_code, alive.json()) == (200, {"status": "alive"})


def test_the_router_bounds_the_request_head_and_answers_malformed_requests_in_json(router):
    import socket

    host, port = router.url.removeprefix("http://").split(":")
    for payload, status in ((b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nX-Big: "
                             + b"a" * (4 << 20) + b"\r\n\r\n", b"431"),
                            (b"NOT HTTP\x00\r\n\r\n", b"400")):
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            try:
                sock.sendall(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered and closed before taking it all
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.split(b" ")[1] == status, answer[:200]
        assert b"content-type: application/json" in answer and b'{"error":' in answer
