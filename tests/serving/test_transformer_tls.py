"""A transformer calling a predictor that serves TLS and requires client certificates (mTLS):
verified against the CA it is given, over REST V2 and gRPC; refused when it cannot verify or
present a certificate the predictor trusts, and never downgraded to plain text."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.security.tls_certs import Pki
from tests.transformer_support import CLASS, copy_example, load_failure

pytestmark = pytest.mark.slow

LINE = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["1,1,0,0"]}]}


@pytest.fixture(scope="module")
def setup(model_zoo: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("transformer-tls")
    pki, code = Pki(folder / "pki"), copy_example(folder)
    predictor = ServerProcess(model_zoo["root"] / "iris" / "1", "--name", "iris",
                              "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                              "--tls-client-ca", str(pki.ca))
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"https://127.0.0.1:{predictor.http_port}/v2/health/ready",
                             verify=context).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, predictor.log()
            time.sleep(0.2)
        yield {"pki": pki, "code": code, "predictor": predictor}
    finally:
        predictor.stop()


def _transformer(setup: dict, protocol: str, *tls: str) -> ServerProcess:
    predictor = setup["predictor"]
    port = predictor.grpc_port if protocol == "grpc-v2" else predictor.http_port
    return ServerProcess(setup["code"], "--model-class", CLASS, "--name", "iris",
                         "--predictor-protocol", protocol,
                         "--transformer-for", f"127.0.0.1:{port}", *tls).wait_ready()


@pytest.mark.parametrize("protocol", ["v2", "grpc-v2"])
def test_mtls_to_the_predictor(setup: dict, protocol: str) -> None:
    pki: Pki = setup["pki"]
    good = _transformer(setup, protocol, "--predictor-ca", str(pki.ca),
                        "--predictor-cert", str(pki.client_cert),
                        "--predictor-key", str(pki.client_key))
    no_client_cert = _transformer(setup, protocol, "--predictor-ca", str(pki.ca))
    wrong_ca = _transformer(setup, protocol, "--predictor-ca", str(pki.other_ca),
                            "--predictor-cert", str(pki.client_cert),
                            "--predictor-key", str(pki.client_key))
    plain = _transformer(setup, protocol)
    try:
        answer = httpx.post(f"{good.url}/v2/models/iris/infer", json=LINE, timeout=30)
        assert answer.status_code == 200, answer.text
        assert {o["name"]: o["data"] for o in answer.json()["outputs"]} == {
            "species": ["versicolor"], "class_id": [1]}  # the zoo's iris: x0 + x1 > 0
        for refused in (no_client_cert, wrong_ca, plain):
            answer = httpx.post(f"{refused.url}/v2/models/iris/infer", json=LINE, timeout=30)
            assert answer.status_code == 503, (answer.text, refused.log())
            assert answer.json() == {"error": "predictor of 'iris' is unreachable"}
    finally:
        for server in (good, no_client_cert, wrong_ca, plain):
            server.stop()


def test_an_https_predictor_without_a_ca_is_refused_at_load(setup: dict) -> None:
    transformer = ServerProcess(setup["code"], "--model-class", CLASS, "--name", "iris",
                                "--transformer-for", "https://127.0.0.1:1")
    try:
        assert "is TLS: give the CA that signed its certificate (--predictor-ca)" in \
            load_failure(transformer.url, "iris", "give the CA")
    finally:
        transformer.stop()
