"""Inference graphs against real servers: each router type returns what composing the calls by
hand returns; Hard vs Soft dependencies; step and graph timeouts."""

from __future__ import annotations

import time

import httpx
import pytest
from graph_spec import (
    dependency_and_timeout_graphs,
    graph,
    step,
    within_binomial,
    without_request_id,
)

X = [1.5, -2.0]
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": X}]}


@pytest.fixture(scope="module")
def router(upstreams, router_cls, tmp_path_factory):
    a1, b = upstreams["a1"].url, upstreams["b"].url

    def svc(name: str, url: str, model: str) -> dict:
        return {"name": name, "variants": [{"name": "v", "weight": 1, "model": model,
                                            "http": [url]}]}

    config = {"services": [svc("echo", a1, "m"), svc("double", b, "m"),
                           svc("failing", a1, "failing"), svc("slow", a1, "slow")],
              "graphs": [
        graph("seq", "Sequence", [step("echo"), step("double", data="$response")]),
        graph("seq-req", "Sequence", [step("double"), step("echo", data="$request")]),
        graph("ens", "Ensemble", [step("echo"), step("double")]),
        graph("switch", "Switch", [
            step("double", condition='[@this].#(parameters.route=="double")'), step("echo")]),
        graph("split", "Splitter", [step("echo", weight=70), step("double", weight=30)]),
        *dependency_and_timeout_graphs(),
    ]}
    r = router_cls(config, tmp_path_factory.mktemp("graph"), grpc=False)
    yield r
    r.stop()


CLIENT = httpx.Client()


def post(router, name: str, body=BODY, **kw) -> httpx.Response:
    return CLIENT.post(f"{router.url}/v2/models/{name}/infer", json=body, **kw)


def data(resp: httpx.Response) -> list:
    assert resp.status_code == 200, resp.text
    return resp.json()["outputs"][0]["data"]


def by_hand(upstreams, server: str, body=BODY) -> dict:
    return httpx.post(f"{upstreams[server].url}/v2/models/m/infer", json=body).json()


def test_sequence_passes_the_response_on(router, upstreams):
    first = by_hand(upstreams, "a1")
    second = by_hand(upstreams, "b", {"inputs": first["outputs"]})
    before = router.sample("turnout_router_graph_requests_total", graph="seq",
                           outcome="success")
    assert post(router, "seq").json() == second
    assert router.sample("turnout_router_graph_requests_total", graph="seq",
                         outcome="success") == before + 1
    assert data(post(router, "seq-req")) == X  # $request: the last step saw the original


def test_sequence_over_v1(router):
    resp = httpx.post(f"{router.url}/v1/models/seq:predict", json={"instances": [X]})
    assert resp.json() == {"predictions": [[3.0, -4.0]]}


def test_nested_nodes(router):
    assert data(post(router, "nested")) == [6.0, -8.0]


def test_ensemble_merges_by_step_name(router, upstreams):
    assert post(router, "ens").json() == {"echo": by_hand(upstreams, "a1"),
                                          "double": by_hand(upstreams, "b")}


def test_switch_follows_the_condition(router):
    routed = {**BODY, "parameters": {"route": "double"}}
    assert data(post(router, "switch", routed)) == [3.0, -4.0]
    assert data(post(router, "switch")) == X


def test_splitter_follows_weights(router):
    n = 200
    doubled = sum(data(post(router, "split")) == [3.0, -4.0] for _ in range(n))
    assert within_binomial(doubled, n, 0.3), doubled


def test_soft_dependency_is_skipped_and_hard_fails_the_graph(router, upstreams):
    assert data(post(router, "soft")) == [3.0, -4.0]
    hard = post(router, "hard")
    direct = httpx.post(f"{upstreams['a1'].url}/v2/models/failing/infer", json=BODY)
    assert hard.status_code == direct.status_code
    assert without_request_id(hard.json()["error"]) == without_request_id(direct.json()["error"])
    soft = post(router, "ens-soft").json()
    assert soft["echo"]["outputs"][0]["data"] == X and "error" in soft["failing"]
    assert post(router, "ens-hard").status_code == direct.status_code


def test_step_and_graph_timeouts(router):
    for name, message in (("step-timeout", "did not finish within 0.3s"),
                          ("graph-timeout", "graph 'graph-timeout' did not finish")):
        started = time.perf_counter()
        resp = post(router, name)
        assert time.perf_counter() - started < 0.9
        # serving.protocol.errors' timeout kind: 504 here, DEADLINE_EXCEEDED on gRPC
        assert resp.status_code == 504 and message in resp.json()["error"], resp.text
    assert router.sample("turnout_router_graph_steps_total", graph="step-timeout", node="root",
                         step="slow", outcome="timeout") == 1
    assert router.sample("turnout_router_graph_requests_total", graph="graph-timeout",
                         outcome="timeout") == 1
    assert router.sample("turnout_router_graph_requests_total", graph="step-timeout",
                         outcome="step_failed") == 1


def test_headers_are_propagated_to_steps(router, upstreams):
    resp = post(router, "seq", headers={"x-request-id": "graph-req-7"})
    assert resp.headers["x-request-id"] == "graph-req-7"


def test_service_calls_are_claimed_by_the_fast_path_and_graphs_are_not(router):
    """Service inference skips uvicorn's ASGI cycle (serving/rest/fastpath.py); graphs, GETs
    and unknown routes keep the ASGI app, and both answer."""
    edge = router.server._http[0].config.http_protocol_class.handler
    claimed = edge.claim("/v2/models/echo/infer", [])
    assert claimed is not None and claimed[1] is False  # always awaits its upstream
    assert claimed[0].model == "echo" and claimed[0].protocol == "rest"
    v1 = edge.claim("/v1/models/echo:predict", [(b"x-request-id", b"r-1")])
    assert v1 is not None and v1[0].protocol == "rest-v1" and v1[0].rid == b"r-1"
    assert edge.claim("/v2/models/seq/infer", []) is None
    assert edge.claim("/v2/models/echo/ready", []) is None
    assert edge.claim("/v2/models/echo", []) is None
    assert data(post(router, "echo")) and data(post(router, "seq"))
