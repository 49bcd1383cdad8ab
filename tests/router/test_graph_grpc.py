"""Inference graphs over gRPC against real servers: for each router type the gRPC answer equals
the REST answer through the router and composing the calls by hand; Hard vs Soft dependencies;
timeouts → DEADLINE_EXCEEDED; a bad request keeps the model server's code and message;
metadata plays the part of headers. The message conversions are checked on their own too."""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from graph_spec import (
    dependency_and_timeout_graphs,
    graph,
    step,
    within_binomial,
    without_request_id,
)
from tritonclient.utils import InferenceServerException

from router.graph_grpc import merge_responses, request_view, response_to_request
from serving.protocol import proto
from serving.protocol.errors import STATUS, ErrorKind

X = np.asarray([[1.5, -2.0]], dtype=np.float32)
ROWS = np.asarray([[0.3, -0.2, 1.4, 0.2], [2.0, 1.0, 0.1, -1.0], [-1.0, 0.5, 0.9, 0.0]])
BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": X[0].tolist()}]}
ROUTE_DOUBLE = '[@this].#(parameters.route=="double")'


@pytest.fixture(scope="module")
def router(upstreams, router_cls, tmp_path_factory):
    a1, b = upstreams["a1"], upstreams["b"]

    def variant(name: str, server, model: str, weight: float = 1) -> dict:
        return {"name": name, "weight": weight, "model": model, "http": [server.url],
                "grpc": [server.grpc_url]}

    def svc(name: str, server, model: str) -> dict:
        return {"name": name, "variants": [variant("v", server, model)]}

    config = {"services": [
        svc("echo", a1, "m"), svc("double", b, "m"), svc("failing", a1, "failing"),
        svc("slow", a1, "slow"), svc("tree", a1, "iris_tree"), svc("logreg", b, "iris_logreg"),
        {"name": "routed", "variants": [variant("default", a1, "m"),
                                        variant("canary", b, "m", weight=0)],
         "rules": [{"header": {"x-experiment": "b"}, "variant": "canary"}]}],
        "graphs": [
        graph("seq", "Sequence", [step("echo"), step("double", data="$response")]),
        graph("seq-req", "Sequence", [step("double"), step("echo", data="$request")]),
        graph("ens", "Ensemble", [step("echo"), step("double")]),
        graph("iris", "Ensemble", [step("tree"), step("logreg")]),
        graph("switch", "Switch", [step("double", condition=ROUTE_DOUBLE), step("echo")]),
        graph("switch-data", "Switch", [step("double", condition="inputs.0.data.#(>1)"),
                                        step("echo")]),
        graph("switch-none", "Switch", [step("double", condition=ROUTE_DOUBLE)]),
        graph("split", "Splitter", [step("echo", weight=70), step("double", weight=30)]),
        *dependency_and_timeout_graphs(),
        graph("via-rule", "Sequence", [step("routed")]),
    ]}
    r = router_cls(config, tmp_path_factory.mktemp("graph-grpc"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def clients(router, upstreams):
    made = {"router": tgrpc.InferenceServerClient(router.grpc_url),
            **{k: tgrpc.InferenceServerClient(upstreams[k].grpc_url) for k in ("a1", "b")}}
    yield made
    for client in made.values():
        client.close()


HTTP = httpx.Client()


def infer(client, model: str, data: np.ndarray = X, **kw) -> tgrpc.InferResult:
    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64"}.get(data.dtype, "BYTES")
    tensor = tgrpc.InferInput("x", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor], **kw)


def failure(client, model: str, data: np.ndarray = X, **kw) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        infer(client, model, data, **kw)
    return (str(info.value.status()).removeprefix("StatusCode."),
            without_request_id(info.value.message()))


def outputs(result: tgrpc.InferResult) -> list[dict]:
    """A gRPC answer's outputs as V2 JSON outputs."""
    return [{"name": o.name, "datatype": o.datatype, "shape": list(o.shape),
             "data": result.as_numpy(o.name).reshape(-1).tolist()}
            for o in result.get_response().outputs]


def rest(router, name: str, body=BODY) -> httpx.Response:
    return HTTP.post(f"{router.url}/v2/models/{name}/infer", json=body)


def rest_outputs(resp: httpx.Response) -> list[dict]:
    assert resp.status_code == 200, resp.text
    return [{k: o[k] for k in ("name", "datatype", "shape", "data")}
            for o in resp.json()["outputs"]]


def grpc_of(status: int) -> str:
    """The gRPC code serving.protocol.errors pairs with an HTTP status."""
    return next(code for kind, (http, code) in STATUS.items() if http == status
                and kind is not ErrorKind.TOO_LARGE)


def test_sequence_passes_the_response_on(router, clients):
    by_hand = infer(clients["b"], "m", infer(clients["a1"], "m").as_numpy("y"))
    got = infer(clients["router"], "seq")
    assert got.get_response().model_name == "seq"
    assert outputs(got) == outputs(by_hand) == rest_outputs(rest(router, "seq"))
    assert np.array_equal(got.as_numpy("y"), 2 * X)
    req = infer(clients["router"], "seq-req")  # $request: the last step saw the original
    assert outputs(req) == rest_outputs(rest(router, "seq-req")) == outputs(
        infer(clients["a1"], "m"))
    assert outputs(infer(clients["router"], "nested")) == rest_outputs(rest(router, "nested"))
    assert np.array_equal(infer(clients["router"], "nested").as_numpy("y"), 4 * X)


def ensemble_as_rest(result: tgrpc.InferResult) -> dict:
    """A gRPC Ensemble answer in the REST Ensemble's shape, ``{stepName: answer}``."""
    response = result.get_response()
    doc: dict = {}
    for out, item in zip(response.outputs, outputs(result), strict=True):
        name, _, output = out.name.partition(".")
        doc.setdefault(name, {}).setdefault("outputs", []).append({**item, "name": output})
    for key, value in response.parameters.items():
        name, _, field = key.partition(".")
        doc.setdefault(name, {})[field] = without_request_id(value.string_param)
    return doc


def rest_ensemble(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return {name: {**{k: without_request_id(v) if k == "error" else v
                      for k, v in answer.items() if k != "outputs"},
                   **({"outputs": rest_outputs_of(answer)} if "outputs" in answer else {})}
            for name, answer in resp.json().items()}


def rest_outputs_of(answer: dict) -> list[dict]:
    return [{k: o[k] for k in ("name", "datatype", "shape", "data")} for o in answer["outputs"]]


def test_ensemble_merges_by_step_name(router, clients):
    got = infer(clients["router"], "ens")
    assert got.get_response().model_name == "ens"
    assert [o.name for o in got.get_response().outputs] == ["echo.y", "double.y"]
    assert ensemble_as_rest(got) == rest_ensemble(rest(router, "ens"))
    by_hand = {"echo": infer(clients["a1"], "m"), "double": infer(clients["b"], "m")}
    for name, direct in by_hand.items():
        assert np.array_equal(got.as_numpy(f"{name}.y"), direct.as_numpy("y"))
        assert ensemble_as_rest(got)[name]["model_name"] == direct.get_response().model_name


def test_ensemble_of_real_models(router, clients, model_zoo):
    got = infer(clients["router"], "iris", ROWS)
    body = {"inputs": [{"name": "x", "shape": list(ROWS.shape), "datatype": "FP64",
                        "data": ROWS.reshape(-1).tolist()}]}
    assert ensemble_as_rest(got) == rest_ensemble(rest(router, "iris", body))
    for name, server, model, fitted in (("tree", "a1", "iris_tree", "iris_v1"),
                                        ("logreg", "b", "iris_logreg", "iris_v2")):
        direct = infer(clients[server], model, ROWS)
        for out in direct.get_response().outputs:
            assert np.array_equal(got.as_numpy(f"{name}.{out.name}"), direct.as_numpy(out.name))
        assert got.as_numpy(f"{name}.predict").tolist() == model_zoo[fitted].predict(ROWS).tolist()


def test_switch_follows_the_condition(router, clients):
    routed = infer(clients["router"], "switch", parameters={"route": "double"})
    rest_routed = rest(router, "switch", {**BODY, "parameters": {"route": "double"}})
    assert outputs(routed) == rest_outputs(rest_routed) == outputs(infer(clients["b"], "m"))
    plain = infer(clients["router"], "switch")
    assert outputs(plain) == rest_outputs(rest(router, "switch")) == outputs(
        infer(clients["a1"], "m"))
    # A condition on the tensor data itself: the JSON view carries the values.
    assert np.array_equal(infer(clients["router"], "switch-data").as_numpy("y"), 2 * X)
    small = np.asarray([[0.5, -2.0]], dtype=np.float32)
    assert np.array_equal(infer(clients["router"], "switch-data", small).as_numpy("y"), small)
    code, message = failure(clients["router"], "switch-none")
    resp = rest(router, "switch-none")
    assert (code, message) == (grpc_of(resp.status_code), resp.json()["error"])
    assert code == "NOT_FOUND"


def test_splitter_follows_weights(router, clients):
    n = 100
    doubled = sum(np.array_equal(infer(clients["router"], "split").as_numpy("y"), 2 * X)
                  for _ in range(n))
    assert within_binomial(doubled, n, 0.3), doubled


def test_soft_dependency_is_skipped_and_hard_fails_the_graph(router, clients):
    soft = infer(clients["router"], "soft")
    assert outputs(soft) == rest_outputs(rest(router, "soft"))
    assert np.array_equal(soft.as_numpy("y"), 2 * X)
    direct = failure(clients["a1"], "failing")
    assert direct[0] == "INTERNAL"
    assert failure(clients["router"], "hard") == direct
    assert grpc_of(rest(router, "hard").status_code) == direct[0]
    ens = infer(clients["router"], "ens-soft")
    assert np.array_equal(ens.as_numpy("echo.y"), X)
    assert [o.name for o in ens.get_response().outputs] == ["echo.y"]
    assert without_request_id(
        ens.get_response().parameters["failing.error"].string_param) == direct[1]
    assert ensemble_as_rest(ens) == rest_ensemble(rest(router, "ens-soft"))
    assert failure(clients["router"], "ens-hard") == direct


def test_timeouts_are_deadline_exceeded(router, clients):
    for name, message in (("step-timeout", "did not finish within 0.3s"),
                          ("graph-timeout", "graph 'graph-timeout' did not finish within 0.3s")):
        started = time.perf_counter()
        code, text = failure(clients["router"], name)
        assert time.perf_counter() - started < 0.9
        assert code == "DEADLINE_EXCEEDED" and message in text, text
        resp = rest(router, name)
        assert (grpc_of(resp.status_code), resp.json()["error"]) == (code, text)
    assert router.sample("turnout_router_graph_steps_total", graph="step-timeout", node="root",
                         step="slow", outcome="timeout") == 2


def test_bad_request_keeps_the_model_servers_code_and_message(router, clients):
    words = np.asarray([[b"a", b"b"]], dtype=object)
    direct = failure(clients["a1"], "m", words)
    assert direct[0] == "INVALID_ARGUMENT"
    assert failure(clients["router"], "seq", words) == direct
    resp = rest(router, "seq", {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "BYTES",
                                            "data": ["a", "b"]}]})
    assert grpc_of(resp.status_code) == direct[0]


def test_metadata_plays_the_part_of_headers(router, clients):
    assert np.array_equal(infer(clients["router"], "via-rule").as_numpy("y"), X)
    ruled = infer(clients["router"], "via-rule", headers={"x-experiment": "b"})
    assert np.array_equal(ruled.as_numpy("y"), 2 * X)  # the rule saw the client's metadata
    request = proto.ModelInferRequest(model_name="seq", id="req-1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(X.tobytes())
    with grpc.insecure_channel(router.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        body, info = call.with_call(request.SerializeToString(), timeout=5,
                                    metadata=(("x-request-id", "graph-req-7"),))
        assert ("x-request-id", "graph-req-7") in info.trailing_metadata()
        _, info = call.with_call(request.SerializeToString(), timeout=5)
        minted = dict(info.trailing_metadata())["x-request-id"]
        assert minted and minted != "graph-req-7"
        with pytest.raises(grpc.RpcError) as err:  # a failure carries the id too
            call(proto.ModelInferRequest(model_name="hard").SerializeToString(), timeout=5,
                 metadata=(("x-request-id", "graph-req-8"),))
        assert ("x-request-id", "graph-req-8") in err.value.trailing_metadata()
        with pytest.raises(grpc.RpcError) as err:  # graphs answer ModelInfer only, as on REST
            channel.unary_unary("/inference.GRPCInferenceService/ModelReady")(
                proto.ModelReadyRequest(name="seq").SerializeToString(), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    answer = proto.ModelInferResponse.FromString(body)
    assert answer.model_name == "seq"
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [3.0, -4.0]


# -- the conversions on their own --------------------------------------------------------------

def test_response_becomes_the_next_request_without_decoding():
    response = proto.ModelInferResponse(model_name="m", model_version="1", id="r")
    response.parameters["p"].int64_param = 3
    out = response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    out.parameters["q"].bool_param = True
    response.raw_output_contents.append(X.tobytes())
    request = response_to_request(response)
    assert (request.model_name, request.id) == ("", "")
    assert request.parameters["p"].int64_param == 3
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("y", "FP32", [1, 2])
    assert tensor.parameters["q"].bool_param
    assert request.raw_input_contents[0] == X.tobytes()
    typed = proto.ModelInferResponse()
    typed.outputs.add(name="y", datatype="INT64", shape=[2]).contents.int64_contents.extend([4, 5])
    assert list(response_to_request(typed).inputs[0].contents.int64_contents) == [4, 5]


def test_conditions_see_the_v2_json_view():
    request = proto.ModelInferRequest(model_name="g", id="r1")
    request.parameters["route"].string_param = "double"
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.inputs.add(name="w", datatype="BYTES", shape=[1])
    request.outputs.add(name="y")
    request.raw_input_contents.extend([X.tobytes(), b"\x02\x00\x00\x00hi"])
    assert request_view(request.SerializeToString()) == {
        "id": "r1", "parameters": {"route": "double"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]},
                   {"name": "w", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
        "outputs": [{"name": "y"}]}


def test_ensemble_merge_makes_mixed_contents_raw():
    raw = proto.ModelInferResponse(model_name="a", model_version="2")
    raw.outputs.add(name="y", datatype="FP32", shape=[1, 2])
    raw.raw_output_contents.append(X.tobytes())
    typed = proto.ModelInferResponse(model_name="b")
    typed.outputs.add(name="k", datatype="INT64", shape=[2]).contents.int64_contents.extend([4, 5])
    merged = merge_responses([("one", raw), ("two", typed), ("three", "boom")])
    assert [o.name for o in merged.outputs] == ["one.y", "two.k"]
    assert not merged.outputs[1].HasField("contents")
    assert np.frombuffer(merged.raw_output_contents[1], np.int64).tolist() == [4, 5]
    assert {k: v.string_param for k, v in merged.parameters.items()} == {
        "one.model_name": "a", "one.model_version": "2", "two.model_name": "b",
        "three.error": "boom"}


def test_grpc_graph_steps_reach_rest_only_services_over_the_protobuf_hop(upstreams, router_cls,
                                                                         tmp_path):
    """A step whose service has no gRPC endpoint: over gRPC the graph still runs, each step's
    ModelInfer going to the Turnout server as protobuf over HTTP."""
    a1, b = upstreams["a1"], upstreams["b"]
    r = router_cls({"upstream": {"grpc_via_http": True}, "services": [
        {"name": "echo", "variants": [{"name": "v", "weight": 1, "model": "m", "http": [a1.url]}]},
        {"name": "double", "variants": [{"name": "v", "weight": 1, "model": "m",
                                         "http": [b.url]}]}],
        "graphs": [graph("seq", "Sequence", [step("echo"), step("double", data="$response")])]},
        tmp_path)
    client = tgrpc.InferenceServerClient(r.grpc_url)
    try:
        result = infer(client, "seq", X, headers={"x-request-id": "g-1"})
        assert np.array_equal(result.as_numpy("y"), 2 * X)
        assert result.get_response().model_name == "seq"
        assert r.sample("turnout_router_upstream_requests_total", service="double",
                        variant="v", endpoint=b.url, outcome="200") == 1
    finally:
        client.close()
        r.stop()
