"""``turnout up`` with TLS on its public ports (client certificates required) and on its
loopback admin API: clients reach the model through the router with their certificate, and
only with it; the CLI still drives the plane (it trusts exactly the plane's certificate); the
plane still reads the router's counters; a replaced certificate reaches the public ports.

One plane for the module: its router, one sklearn replica.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.security.tls_certs import Pki, Process, context, eventually, free_port, peer_serial

ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                   "data": [5.1, 3.5, 1.4, 0.2]}]}


class TlsPlane(Process):
    def __init__(self, folder: Path, pki: Pki, model: Path) -> None:
        self.folder, self.pki = folder, pki
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.http_port}"
        (folder / "manifest.yaml").write_text(yaml.safe_dump({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "iris"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                             "storageUri": f"file://{model}"}}}}))
        super().__init__(["up", "-f", "manifest.yaml", "--http-port", str(self.http_port),
                          "--grpc-port", str(self.grpc_port), "--tls-cert", str(pki.cert),
                          "--tls-key", str(pki.key), "--tls-client-ca", str(pki.ca),
                          "--admin-tls", "--model-root", str(model)], folder / "up.log", cwd=folder)

    def https(self, *, client_cert: bool = True) -> httpx.Client:
        cert = (self.pki.client_cert, self.pki.client_key) if client_cert else None
        return httpx.Client(base_url=self.url, verify=context(self.pki.ca, cert), timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=self.folder,
                              capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsPlane]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    model = tmp_path_factory.mktemp("iris")
    x, y = load_iris(return_X_y=True)
    joblib.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, y),
                model / "model.joblib")
    proc = TlsPlane(tmp_path_factory.mktemp("plane"), pki, model)
    try:
        def serving() -> bool:
            with proc.https() as client:
                return client.post("/v2/models/iris/infer", json=ROW).status_code == 200
        proc.wait_for(serving, timeout=120, what="turnout up over TLS")
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()[-3000:]


def test_rest_and_grpc_through_the_planes_mtls_ports(plane: TlsPlane, pki: Pki) -> None:
    import tritonclient.grpc as grpcclient

    with plane.https() as client:
        for _ in range(5):
            response = client.post("/v2/models/iris/infer", json=ROW)
            assert response.status_code == 200, response.text
    grpc_client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{plane.grpc_port}", ssl=True, root_certificates=str(pki.ca),
        private_key=str(pki.client_key), certificate_chain=str(pki.client_cert))
    try:
        x = grpcclient.InferInput("x", [1, 4], "FP64")
        x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
        assert grpc_client.infer("iris", [x]).as_numpy("predict").shape == (1,)
    finally:
        grpc_client.close()


def test_clients_without_a_certificate_or_without_tls_are_refused(plane: TlsPlane) -> None:
    with plane.https(client_cert=False) as client, pytest.raises(httpx.HTTPError):
        client.post("/v2/models/iris/infer", json=ROW)
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{plane.http_port}/v2/models/iris/infer", json=ROW,
                   timeout=5)


def test_the_cli_reaches_the_tls_admin_api_and_plain_http_does_not(plane: TlsPlane) -> None:
    info = json.loads((plane.folder / ".turnout" / "plane.json").read_text())
    assert info["admin"].startswith("https://127.0.0.1:")
    assert Path(info["admin_cert"]) == plane.pki.cert.resolve()
    status = plane.cli("status", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["services"][0]["name"] == "iris"
    with pytest.raises(httpx.HTTPError):
        httpx.get(info["admin"].replace("https://", "http://") + "/metrics", timeout=5)
    metrics = httpx.get(info["admin"] + "/metrics", verify=context(plane.pki.ca), timeout=10)
    assert metrics.status_code == 200 and "turnout_replicas" in metrics.text


def test_the_plane_still_reads_the_routers_counters(plane: TlsPlane) -> None:
    """With mTLS on the public ports the plane reads the router's /metrics on its admin API:
    the requests sent show in ``turnout status``."""
    with plane.https() as client:
        for _ in range(30):
            assert client.post("/v2/models/iris/infer", json=ROW).status_code == 200

    def counted() -> bool:
        status = json.loads(plane.cli("status", "-o", "json").stdout)
        return status["services"][0]["variants"][0]["rps"] > 0
    eventually(counted, timeout=30, what="request rate in turnout status")


def test_a_replaced_certificate_reaches_the_public_ports_and_the_admin_api(
        plane: TlsPlane, pki: Pki) -> None:
    info = json.loads((plane.folder / ".turnout" / "plane.json").read_text())
    admin_port = int(info["admin"].rsplit(":", 1)[1])
    client = (pki.client_cert, pki.client_key)

    def serials() -> list[int]:
        return [peer_serial(plane.http_port, pki.ca, client=client),
                peer_serial(plane.grpc_port, pki.ca, client=client, alpn="h2"),
                peer_serial(admin_port, pki.ca)]

    assert serials() == [pki.serial] * 3
    new = pki.reissue()
    eventually(lambda: serials() == [new] * 3, what="new certificate everywhere")
    assert plane.cli("status").returncode == 0  # the CLI trusts the new certificate file
    with plane.https() as https:
        assert https.post("/v2/models/iris/infer", json=ROW).status_code == 200


def test_up_refuses_unusable_tls_settings(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "x"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                         "storageUri": f"file://{tmp_path}"}}}}))

    def up(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "serving.cli", "up", "-f", "m.yaml",
                               "--http-port", str(free_port()), *flags], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    admin_alone = up("--admin-tls")
    assert admin_alone.returncode == 2 and "--admin-tls needs" in admin_alone.stderr
    swapped = up("--tls-cert", str(pki.key), "--tls-key", str(pki.cert))
    assert swapped.returncode == 2 and "cannot be used together" in swapped.stderr
    assert not (tmp_path / ".turnout" / "plane.json").exists()
