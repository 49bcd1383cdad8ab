"""TLS through the router: a TLS edge (REST, gRPC, admin) in front of a model server that
requires client certificates, reached over TLS on every hop the router has — REST (the pooled
HTTP/1.1 client), gRPC as protobuf over HTTP/1.1 (the edge threads' blocking client) and gRPC
channels — verified against the router's upstream CA, with its own client certificate.

One model server (mTLS) and one ``turnout router`` process for the module.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml

from router.client import UpstreamError
from router.h1blocking import BlockingH1Client
from router.h1client import H1Client
from router.settings import RouterSettings
from serving.transport.tls import ClientTls
from tests.security.tls_certs import (
    READY,
    Pki,
    Process,
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


class TlsRouter(Process):
    def __init__(self, folder: Path, pki: Pki, upstream: TlsServer) -> None:
        self.pki = pki
        self.http_port, self.grpc_port, self.admin_port = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.http_port}"
        rest, grpcs = f"https://127.0.0.1:{upstream.http_port}", \
            f"grpcs://127.0.0.1:{upstream.grpc_port}"
        routes = self.routes = folder / "routes.yaml"
        routes.write_text(yaml.safe_dump({"services": [
            # REST hop and, for gRPC clients, protobuf over HTTP/1.1 on the same TLS endpoint
            {"name": "m", "upstream": {"grpc_via_http": True},
             "variants": [{"name": "a", "weight": 1, "http": [rest], "grpc": [grpcs]}]},
            # gRPC clients reach this one over the router's TLS gRPC channels
            {"name": "g", "upstream": {"grpc_via_http": False},
             "variants": [{"name": "a", "weight": 1, "model": "m", "grpc": [grpcs]}]},
            # the upstream's name checked against its certificate: localhost, not the address
            {"name": "named", "variants": [{"name": "a", "weight": 1, "model": "m",
                                            "http": [f"https://localhost:{upstream.http_port}"]}]},
        ]}))
        super().__init__(["router", "--config", str(routes), "--http-port", str(self.http_port),
                          "--grpc-port", str(self.grpc_port), "--admin-port", str(self.admin_port),
                          "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--admin-tls",
                          "--upstream-ca", str(pki.ca), "--upstream-cert", str(pki.client_cert),
                          "--upstream-key", str(pki.client_key)],
                         folder / f"router-{self.http_port}.log")

    def https(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=context(self.pki.ca), timeout=10)

    def admin(self) -> httpx.Client:
        """The admin API over TLS, with its token where the router wrote one."""
        token = self.routes.with_name(self.routes.name + ".admin-token")
        headers = {"authorization": f"Bearer {token.read_text().strip()}"} \
            if token.exists() else {}
        return httpx.Client(base_url=f"https://127.0.0.1:{self.admin_port}", headers=headers,
                            verify=context(self.pki.ca), timeout=10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsServer]:
    server = TlsServer(echo_models(tmp_path_factory.mktemp("upstream")), pki, mtls=True)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, pki: Pki,
           upstream: TlsServer) -> Iterator[TlsRouter]:
    proc = TlsRouter(tmp_path_factory.mktemp("router"), pki, upstream)
    try:
        def serving() -> bool:
            with proc.https() as client:
                return client.post("/v2/models/m/infer", json=ROW).status_code == 200
        proc.wait_for(serving, what="router over TLS")
        yield proc
    finally:
        proc.stop()


def test_rest_through_a_tls_edge_and_a_verified_mtls_hop(router: TlsRouter) -> None:
    with router.https() as client:
        for service in ("m", "named"):
            for _ in range(10):  # pooled TLS connections upstream are reused
                response = client.post(f"/v2/models/{service}/infer", json=ROW)
                assert response.status_code == 200, response.text
                assert response.json()["outputs"][0]["data"] == [1.5, -2.0]
        v1 = client.post("/v1/models/m:predict", json={"instances": [[1, 2]]})
        assert v1.status_code == 200 and v1.json()["predictions"] == [[1, 2]]


def test_curl_through_the_router(router: TlsRouter, pki: Pki) -> None:
    done = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(pki.ca), "-H",
                           "content-type: application/json", "--data", '{"inputs":[{"name":"x",'
                           '"shape":[1,2],"datatype":"FP32","data":[7,8]}]}',
                           f"{router.url}/v2/models/m/infer"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"data":[7.0,8.0]' in done.stdout


@pytest.mark.parametrize("service", ["m", "g"])
def test_tritonclient_grpc_through_the_tls_edge_on_both_grpc_hops(router: TlsRouter, pki: Pki,
                                                                  service: str) -> None:
    """``m``: protobuf over HTTP/1.1 to the upstream's TLS REST port; ``g``: TLS gRPC channels."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{router.grpc_port}", ssl=True,
                                              root_certificates=str(pki.ca))
    try:
        x = grpcclient.InferInput("x", [2, 2], "FP32")
        x.set_data_from_numpy(np.array([[1, 2], [3, 4]], dtype=np.float32))
        for _ in range(5):
            assert client.infer(service, [x]).as_numpy("y").tolist() == [[1, 2], [3, 4]]
    finally:
        client.close()


def test_the_router_health_checks_its_tls_endpoints(router: TlsRouter, upstream: TlsServer
                                                    ) -> None:
    """The active checks (a TLS gRPC ServerReady, an HTTPS GET) pass: the gauge is set only
    after a check has run, to 1 only when it passed."""
    want = {f'endpoint="grpcs://127.0.0.1:{upstream.grpc_port}",service="g"',
            f'endpoint="https://127.0.0.1:{upstream.http_port}",service="m"',
            f'endpoint="https://localhost:{upstream.http_port}",service="named"'}

    def checked() -> bool:
        with router.admin() as admin:
            text = admin.get("/metrics").text
        passed = {line.split("{")[1].split(',variant=')[0] for line in text.splitlines()
                  if line.startswith("turnout_router_endpoint_healthy{") and line.endswith(" 1.0")}
        return want <= passed
    eventually(checked, what="health checks over TLS pass")


def test_admin_api_over_tls_and_plain_clients_refused_on_every_port(router: TlsRouter,
                                                                    pki: Pki) -> None:
    with router.admin() as admin:
        config = admin.get("/config")
    assert config.status_code == 200 and {s["name"] for s in config.json()["services"]} == \
        {"m", "g", "named"}
    for port in (router.http_port, router.admin_port):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5)
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel, \
            pytest.raises(grpc.RpcError):
        channel.unary_unary(READY)(b"", timeout=5)


def test_router_and_upstream_certificates_reload_while_traffic_flows(
        router: TlsRouter, upstream: TlsServer, pki: Pki) -> None:
    ports = [router.http_port, router.grpc_port, router.admin_port, upstream.http_port]
    client_cert = (pki.client_cert, pki.client_key)

    def serials() -> list[int]:
        return [peer_serial(p, pki.ca, alpn="h2" if p == router.grpc_port else None,
                            client=client_cert if p == upstream.http_port else None)
                for p in ports]

    assert serials() == [pki.serial] * 4
    pid = router.proc.pid
    new = pki.reissue()
    eventually(lambda: serials() == [new] * 4, what="the router's listeners and the upstream's")
    assert router.proc.pid == pid and router.proc.poll() is None
    with router.https() as client:
        assert client.post("/v2/models/m/infer", json=ROW).status_code == 200
    with secure_channel(router.grpc_port, pki) as channel:
        assert server_ready(channel) == b"\x08\x01"


# -- the hops' clients against a real TLS model server ---------------------------------------------


def test_h1client_refuses_an_upstream_its_ca_does_not_vouch_for(upstream: TlsServer,
                                                                pki: Pki) -> None:
    async def call(tls: ClientTls) -> int:
        client = H1Client(tls=tls)
        try:
            response = await client.request("GET", f"https://127.0.0.1:{upstream.http_port}/v2",
                                            headers=[], body=b"", timeout=5)
            return response.status
        finally:
            await client.close()

    good = ClientTls(pki.ca, pki.client_cert, pki.client_key)
    assert asyncio.run(call(good)) == 200
    with pytest.raises(UpstreamError, match="TLS handshake") as err:
        asyncio.run(call(ClientTls(pki.other_ca, pki.client_cert, pki.client_key)))
    assert err.value.kind == "connect"
    with pytest.raises(UpstreamError):  # the upstream requires a client certificate
        asyncio.run(call(ClientTls(pki.ca)))


def test_blocking_client_over_tls(upstream: TlsServer, pki: Pki) -> None:
    address = f"https://127.0.0.1:{upstream.http_port}"
    good = BlockingH1Client(connect_timeout=2, tls=ClientTls(pki.ca, pki.client_cert,
                                                               pki.client_key))
    try:
        for _ in range(3):  # the kept-alive TLS socket is reused
            response = good.request(address, "/v2/models/m/infer", headers=[],
                                    content_type=b"application/json",
                                    body=b'{"inputs":[{"name":"x","shape":[1,2],'
                                         b'"datatype":"FP32","data":[1,2]}]}', timeout=5)
            assert response.status == 200, response.body
    finally:
        good.close()
    stranger = BlockingH1Client(connect_timeout=2, tls=ClientTls(pki.other_ca))
    with pytest.raises(UpstreamError, match="TLS handshake") as err:
        stranger.request(address, "/v2", headers=[], content_type=b"text/plain", body=b"",
                         timeout=5)
    assert err.value.kind == "connect"


def test_admin_tls_defaults_to_on_only_off_loopback(pki: Pki, tmp_path: Path) -> None:
    routes = tmp_path / "r.yaml"
    routes.write_text("services: []\n")
    tls = {"config": routes, "tls_cert": pki.cert, "tls_key": pki.key}
    assert not RouterSettings(**tls).admin_serves_tls
    assert RouterSettings(**tls, admin_host="0.0.0.0").admin_serves_tls
    assert RouterSettings(**tls, admin_tls=True).admin_serves_tls
    assert not RouterSettings(**tls, admin_host="0.0.0.0", admin_tls=False).admin_serves_tls
    assert not RouterSettings(config=routes, admin_host="0.0.0.0").admin_serves_tls
    with pytest.raises(ValueError, match="admin_tls needs"):
        RouterSettings(config=routes, admin_tls=True)
    with pytest.raises(ValueError, match="go together"):
        RouterSettings(config=routes, upstream_cert=pki.client_cert)
