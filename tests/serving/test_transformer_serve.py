"""``turnout serve --transformer-for``: the example transformer in front of a real predictor,
called over REST V2, REST V1 and gRPC, and calling its predictor over each protocol."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ServerProcess, free_port
from tests.transformer_support import CLASS, copy_example, expected, load_failure

# The zoo's iris is fitted on (x0 + x1 > 0) + (x2 > 0.5): these lines are classes 0, 1 and 2.
LINES = ["-1,-1,0,0", "1,1,0,0", "1, 1, 1, 0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(model_zoo: dict, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, ServerProcess]]:
    """One predictor (iris version 1) and a transformer per predictor protocol."""
    folder = tmp_path_factory.mktemp("transformer")
    code = copy_example(folder)
    predictor = ServerProcess(model_zoo["root"] / "iris" / "1", "--name", "iris").wait_ready()
    started = {"predictor": predictor}
    try:
        for protocol in ("v2", "v1", "grpc-v2"):
            port = predictor.grpc_port if protocol == "grpc-v2" else predictor.http_port
            started[protocol] = ServerProcess(
                code, "--model-class", CLASS, "--name", "iris", "--predictor-protocol", protocol,
                "--transformer-for", f"127.0.0.1:{port}", "--predictor-timeout", "5")
        for proc in started.values():
            proc.wait_ready()
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def _grpc(server: ServerProcess, model: str, lines: list[str]) -> object:
    """``lines`` as the BYTES input ``text``, through tritonclient's gRPC client."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    text = grpcclient.InferInput("text", [len(lines)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in lines], dtype=object))
    return client.infer(model, [text], client_timeout=10)


def _v2(url: str, lines: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/iris/infer", timeout=10, json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(lines)], "data": lines}]})


@pytest.mark.parametrize("protocol", ["v2", "v1", "grpc-v2"])
def test_every_client_protocol_gets_postprocess_of_the_model_of_preprocess(
        servers: dict[str, ServerProcess], model_zoo: dict, protocol: str) -> None:
    import tritonclient.http as httpclient

    want = expected(model_zoo["root"] / "iris" / "1", LINES)
    assert len(set(want["species"])) > 1  # the lines are of different species
    transformer = servers[protocol]
    answer = _v2(transformer.url, LINES)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs == want

    v1 = httpx.post(f"{transformer.url}/v1/models/iris:predict", json={"instances": LINES})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"] == want["species"]

    result = _grpc(transformer, "iris", LINES)
    assert [s.decode() for s in result.as_numpy("species")] == want["species"]
    assert result.as_numpy("class_id").tolist() == want["class_id"]

    rest = httpclient.InferenceServerClient(transformer.url.removeprefix("http://"))
    text = httpclient.InferInput("text", [len(LINES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in LINES], dtype=object), binary_data=True)
    assert rest.infer("iris", [text]).as_numpy("class_id").tolist() == want["class_id"]


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
def test_a_preprocess_error_is_a_clean_invalid_argument(
        servers: dict[str, ServerProcess], protocol: str) -> None:
    from tritonclient.utils import InferenceServerException

    transformer = servers[protocol]
    answer = _v2(transformer.url, ["5.1,3.5,1.4,0.2", "5.1,not-a-number,1.4,0.2"])
    assert answer.status_code == 400
    assert answer.json() == {"error": "preprocess refused the input: ValueError: could not "
                                      "convert string to float: 'not-a-number'"}
    short = httpx.post(f"{transformer.url}/v1/models/iris:predict", json={"instances": ["1,2"]})
    assert short.status_code == 400
    assert short.json()["error"] == ("preprocess refused the input: ValueError: expected 4 "
                                     "comma-separated numbers, got 2 in '1,2'")
    with pytest.raises(InferenceServerException) as caught:
        _grpc(transformer, "iris", ["a,b,c,d"])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "could not convert string to float: 'a'" in caught.value.message()
    assert "Traceback" not in transformer.log()  # the client's mistake is not a server error


def test_a_wrong_input_is_refused_by_the_declared_inputs_before_preprocess(
        servers: dict[str, ServerProcess]) -> None:
    answer = httpx.post(f"{servers['v2'].url}/v2/models/iris/infer", json={
        "inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert answer.status_code == 400 and "BYTES" in answer.json()["error"]


@pytest.mark.parametrize("protocol", ["v2", "v1", "grpc-v2"])
def test_a_predictor_that_is_down_is_unavailable_at_once(
        tmp_path: Path, protocol: str) -> None:
    from tritonclient.utils import InferenceServerException

    code = copy_example(tmp_path)
    dead = free_port()  # nothing listens there
    transformer = ServerProcess(code, "--model-class", CLASS, "--name", "iris",
                                "--predictor-protocol", protocol,
                                "--transformer-for", f"127.0.0.1:{dead}").wait_ready()
    try:
        started = time.monotonic()
        answer = _v2(transformer.url, LINES[:1])
        assert time.monotonic() - started < 5
        assert answer.status_code == 503
        assert answer.json() == {"error": "predictor of 'iris' is unreachable"}
        assert f"127.0.0.1:{dead} is unreachable" in transformer.log()  # the address: log only
        with pytest.raises(InferenceServerException) as caught:
            _grpc(transformer, "iris", LINES[:1])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        transformer.stop()


def test_a_transformer_without_declared_outputs_or_a_predictor_does_not_load(
        tmp_path: Path) -> None:
    code = copy_example(tmp_path)
    source = (code / "transformer.py").read_text()
    (code / "transformer.py").write_text(source.replace("    outputs = [", "    _outputs = ["))
    proc = ServerProcess(code, "--model-class", CLASS, "--name", "iris",
                         "--transformer-for", "127.0.0.1:1")
    try:
        load_failure(proc.url, "iris", "must declare its outputs")
    finally:
        proc.stop()


KSERVE_STYLE = '''
import numpy as np
from runtimes.python import Model

class Scaled(Model):
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    outputs = [{"name": "label", "datatype": "INT64", "shape": [-1]}]
    seen = []

    async def preprocess(self, payload, headers=None):   # KServe's signature, async
        self.seen.append(headers)
        return payload["x"] * 2

    def postprocess(self, response, headers=None):
        self.seen.append(headers)
        return {"label": response["predict"].astype(np.int64)}
'''


def test_kserve_style_hooks_with_headers_run_in_process(
        servers: dict[str, ServerProcess], model_zoo: dict, tmp_path: Path) -> None:
    from runtimes.transformer import RUNTIME, TransformerRuntime, predictor_parameters
    from serving.runtime.settings import ModelSettings

    (tmp_path / "scaled.py").write_text(KSERVE_STYLE)
    settings = ModelSettings(name="iris", artifact=tmp_path, model_class="scaled:Scaled",
                             runtime=RUNTIME, parameters=predictor_parameters(
                                 host=f"127.0.0.1:{servers['predictor'].http_port}"))
    runtime = TransformerRuntime(settings)
    runtime.load()
    try:
        x = np.array([[-1, -1, 0, 0], [0.5, 0.5, 0, 0], [1, 1, 0.4, 0]], dtype=np.float32)
        got = runtime.predict({"x": x}, ["label"])
        assert got["label"].tolist() == model_zoo["iris_v1"].predict(x * 2).tolist()
        assert runtime.model.seen == [{}, {}]  # headers: an empty dict (not passed on yet)
    finally:
        runtime.unload()


def test_a_burst_waits_for_the_predictor_instead_of_being_refused(
        servers: dict[str, ServerProcess]) -> None:
    """The default of 4 threads and a queue of 256: 128 requests at once all answered."""
    import asyncio

    async def burst() -> list[int]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=128)) as client:
            answers = await asyncio.gather(*(client.post(
                f"{servers['v2'].url}/v2/models/iris/infer", timeout=60, json={"inputs": [
                    {"name": "text", "datatype": "BYTES", "shape": [1], "data": [LINES[i % 3]]}]})
                for i in range(128)))
            return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * 128


PAIRS = '''
import numpy as np
from runtimes.python import Model

class Pairs(Model):
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1], "content_type": "str"}]
    outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]

    def preprocess(self, inputs):
        return {"x": np.array([[float(v) for v in t.split(",")] for t in inputs["text"]],
                              dtype=np.float32)}

    def postprocess(self, result):
        return {"y": next(iter(result.values()))}
'''


def test_a_predictor_slower_than_the_timeout_is_a_504_not_a_wait(
        model_zoo: dict, tmp_path: Path) -> None:
    """The zoo's slow model takes 1 s; the transformer waits 0.3 s for it."""
    from tritonclient.utils import InferenceServerException

    (tmp_path / "pairs.py").write_text(PAIRS)
    predictor = ServerProcess(model_zoo["root"] / "slow", "--name", "slow").wait_ready()
    transformer = ServerProcess(tmp_path, "--model-class", "pairs:Pairs", "--name", "slow",
                                "--transformer-for", f"127.0.0.1:{predictor.http_port}",
                                "--predictor-timeout", "0.3")
    try:
        transformer.wait_ready()
        started = time.monotonic()
        answer = httpx.post(f"{transformer.url}/v2/models/slow/infer", timeout=10, json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["1,2"]}]}
        ).json(), time.monotonic() - started
        assert answer[0] == {"error": "predictor of 'slow' did not answer within 0.3s"}
        assert answer[1] < 0.9
        with pytest.raises(InferenceServerException) as caught:
            _grpc(transformer, "slow", ["1,2"])
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        transformer.stop()
        predictor.stop()
