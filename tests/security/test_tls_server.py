"""TLS on the model server's listeners, with real clients: REST (httpx, curl, tritonclient http)
and gRPC (grpc secure channels, tritonclient grpc) on both gRPC engines; mTLS refusing clients
without a certificate from the trusted CA; a plain client refused on a TLS port; certificates
reloaded when their files change, without a restart.

Two servers for the module, started together: ``tls`` (threaded gRPC engine, TLS, two worker
processes: each loads and reloads its own certificates) and ``mtls`` (aio engine, client
certificates required).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from tests.security.tls_certs import (
    READY,
    Pki,
    TlsServer,
    context,
    echo_models,
    eventually,
    free_port,
    peer_serial,
    secure_channel,
    server_ready,
)

ROW = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[dict[str, TlsServer]]:
    root = echo_models(tmp_path_factory.mktemp("tls-models"))
    started = {"tls": TlsServer(root, pki, "--workers", "2"),
               "mtls": TlsServer(root, pki, "--grpc-engine", "aio", mtls=True)}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


# -- REST -------------------------------------------------------------------------------------


def test_rest_over_https_with_httpx_answers_health_and_inference_on_one_connection(
        servers: dict[str, TlsServer]) -> None:
    with servers["tls"].https() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        for _ in range(20):  # keep-alive: the inference fast path answers on the TLS stream
            response = client.post("/v2/models/m/infer", json=ROW)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == [1.5, -2.0]
        assert client.get("/v2/models/m").json()["name"] == "m"


def test_curl_with_the_ca_gets_an_answer_and_without_it_is_refused(
        servers: dict[str, TlsServer], pki: Pki) -> None:
    url = f"{servers['tls'].url}/v2/models/m/infer"
    ok = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(pki.ca), "-H",
                         "content-type: application/json", "--data", '{"inputs":[{"name":"x",'
                         '"shape":[1,2],"datatype":"FP32","data":[3,4]}]}', url],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert '"data":[3.0,4.0]' in ok.stdout
    untrusted = subprocess.run(["curl", "-sS", url], capture_output=True, text=True, timeout=30)
    assert untrusted.returncode == 60, untrusted.stderr  # peer certificate cannot be verified


def test_tritonclient_http_with_ssl(servers: dict[str, TlsServer], pki: Pki) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{servers['tls'].http_port}", ssl=True,
                                              ssl_options={"ca_certs": str(pki.ca)})
    try:
        assert client.is_server_ready()
        x = httpclient.InferInput("x", [2, 2], "FP32")
        x.set_data_from_numpy(np.array([[1, 2], [3, 4]], dtype=np.float32), binary_data=True)
        out = client.infer("m", [x]).as_numpy("y")
        assert out.tolist() == [[1, 2], [3, 4]]
    finally:
        client.close()


def test_plain_http_on_the_tls_port_gets_no_answer(servers: dict[str, TlsServer]) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{servers['tls'].http_port}/v2/health/ready", timeout=5)


def test_a_client_that_does_not_trust_the_ca_is_refused(servers: dict[str, TlsServer],
                                                        pki: Pki) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{servers['tls'].url}/v2/health/ready", verify=context(pki.other_ca),
                  timeout=5)


def test_mtls_rest_refuses_clients_without_a_certificate_from_the_trusted_ca(
        servers: dict[str, TlsServer], pki: Pki) -> None:
    server = servers["mtls"]
    with server.https() as client:
        assert client.post("/v2/models/m/infer", json=ROW).status_code == 200
    for cert in (None, (pki.other_client_cert, pki.other_client_key)):
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{server.url}/v2/models/m/infer", json=ROW, verify=context(pki.ca, cert),
                       timeout=5)
    refused = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca), f"{server.url}/v2"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    accepted = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(pki.ca), "--cert",
                               str(pki.client_cert), "--key", str(pki.client_key),
                               f"{server.url}/v2"], capture_output=True, text=True, timeout=30)
    assert accepted.returncode == 0 and '"name"' in accepted.stdout, accepted.stderr


# -- gRPC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tls", "mtls"])
def test_tritonclient_grpc_with_ssl_on_both_engines(servers: dict[str, TlsServer], pki: Pki,
                                                    which: str) -> None:
    import tritonclient.grpc as grpcclient

    server = servers[which]
    client_files = {"private_key": str(pki.client_key),
                    "certificate_chain": str(pki.client_cert)} if server.mtls else {}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}", ssl=True,
                                              root_certificates=str(pki.ca), **client_files)
    try:
        assert client.is_server_ready()
        x = grpcclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[5, 6]], dtype=np.float32))
        assert client.infer("m", [x]).as_numpy("y").tolist() == [[5, 6]]
    finally:
        client.close()


def test_grpc_secure_channel_and_health_check(servers: dict[str, TlsServer], pki: Pki) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with secure_channel(servers["tls"].grpc_port, pki) as channel:
        assert server_ready(channel) == b"\x08\x01"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_plain_grpc_on_the_tls_port_fails(servers: dict[str, TlsServer]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{servers['tls'].grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(READY)(b"", timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_mtls_grpc_refuses_a_channel_without_a_client_certificate(
        servers: dict[str, TlsServer], pki: Pki) -> None:
    port = servers["mtls"].grpc_port
    with secure_channel(port, pki) as channel, pytest.raises(grpc.RpcError) as err:
        server_ready(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure_channel(port, pki, client=True) as channel:
        assert server_ready(channel) == b"\x08\x01"


# -- certificate reload -------------------------------------------------------------------------


def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(
        servers: dict[str, TlsServer], pki: Pki) -> None:
    """Both servers read the same files: one reissue shows on REST and gRPC of both engines."""
    client = (pki.client_cert, pki.client_key)
    ports = [(servers["tls"].http_port, None), (servers["tls"].grpc_port, "h2"),
             (servers["mtls"].http_port, client), (servers["mtls"].grpc_port, client)]

    def serials() -> list[int]:
        return [peer_serial(port, pki.ca, client=extra if isinstance(extra, tuple) else None,
                            alpn="h2" if extra == "h2" else None) for port, extra in ports]

    old = pki.serial
    assert serials() == [old] * 4
    pids = [s.proc.pid for s in servers.values()]
    with servers["tls"].https() as kept:  # a connection open across the reload
        assert kept.get("/v2/health/live").status_code == 200
        new = pki.reissue()
        assert new != old
        eventually(lambda: serials() == [new] * 4, what="every listener shows the new certificate")
        assert kept.get("/v2/health/live").status_code == 200
    assert [s.proc.pid for s in servers.values()] == pids
    assert all(s.proc.poll() is None for s in servers.values())
    with servers["tls"].https() as client_:
        assert client_.post("/v2/models/m/infer", json=ROW).status_code == 200
    with secure_channel(servers["mtls"].grpc_port, pki, client=True) as channel:
        assert server_ready(channel) == b"\x08\x01"
    assert "TLS certificate reloaded" in servers["tls"].log()


def test_a_key_that_does_not_match_keeps_the_previous_certificate(
        servers: dict[str, TlsServer], pki: Pki, tmp_path: Path) -> None:
    """A half-replaced pair (new key, old certificate) is never loaded: handshakes go on with
    the previous pair, and the complete new pair is loaded once it is there."""
    import trustme

    before = pki.serial
    stray = trustme.CA().issue_cert("127.0.0.1")
    stray.private_key_pem.write_to_path(str(tmp_path / "key.tmp"))
    (tmp_path / "key.tmp").replace(pki.key)
    eventually(lambda: "were not reloaded" in servers["tls"].log(), what="mismatch logged")
    assert peer_serial(servers["tls"].http_port, pki.ca) == before
    with secure_channel(servers["tls"].grpc_port, pki) as channel:
        assert server_ready(channel) == b"\x08\x01"
    new = pki.reissue()
    eventually(lambda: peer_serial(servers["tls"].http_port, pki.ca) == new, what="new pair")


def test_bad_tls_settings_are_refused_before_the_server_starts(pki: Pki, tmp_path: Path) -> None:
    import sys

    def serve(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serving.cli", "serve", str(tmp_path),
                               "--http-port", str(free_port()), *flags],
                              capture_output=True, text=True, timeout=60)

    only_cert = serve("--tls-cert", str(pki.cert))
    assert only_cert.returncode == 2 and "go together" in only_cert.stderr
    missing = serve("--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.key))
    assert missing.returncode == 2 and "nope.pem" in missing.stderr
    swapped = serve("--tls-cert", str(pki.key), "--tls-key", str(pki.cert))
    assert swapped.returncode == 2 and "cannot be used together" in swapped.stderr
