"""Certificates made at test time (trustme): a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a second CA nobody trusts; plus what a test reads back
from a TLS port (the serial number of the certificate it presents)."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import trustme
import yaml
from cryptography import x509

from tests.conftest import free_port
from tests.processes import CliProcess

READY = "/inference.GRPCInferenceService/ServerReady"


class Pki:
    """Files under ``folder``: ca.pem, cert.pem + key.pem (the server), client-cert.pem +
    client-key.pem (signed by the same CA), and other-ca.pem / other-client-*.pem (another CA)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ca_authority = trustme.CA()
        self.ca = folder / "ca.pem"
        self.cert = folder / "cert.pem"
        self.key = folder / "key.pem"
        self.client_cert = folder / "client-cert.pem"
        self.client_key = folder / "client-key.pem"
        self.other_ca = folder / "other-ca.pem"
        self.other_client_cert = folder / "other-client-cert.pem"
        self.other_client_key = folder / "other-client-key.pem"
        self.ca_authority.cert_pem.write_to_path(str(self.ca))
        self.serial = self.reissue()
        client = self.ca_authority.issue_cert("client@turnout.test")
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        other = trustme.CA()
        other.cert_pem.write_to_path(str(self.other_ca))
        stranger = other.issue_cert("stranger@turnout.test")
        stranger.cert_chain_pems[0].write_to_path(str(self.other_client_cert))
        stranger.private_key_pem.write_to_path(str(self.other_client_key))

    def reissue(self) -> int:
        """A new server certificate and key in place of the old (each file replaced atomically,
        key first, as a certificate manager would); the new serial number."""
        issued = self.ca_authority.issue_cert("127.0.0.1", "localhost")
        for path, blob in ((self.key, issued.private_key_pem),
                           (self.cert, issued.cert_chain_pems[0])):
            tmp = path.with_suffix(".tmp")
            blob.write_to_path(str(tmp))
            os.replace(tmp, path)
        self.serial = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number
        return self.serial

    def bytes(self, path: Path) -> bytes:
        return path.read_bytes()


def peer_serial(port: int, ca: Path, *, client: tuple[Path, Path] | None = None,
                alpn: str | None = None) -> int:
    """Serial number of the certificate a NEW connection to 127.0.0.1:``port`` is shown."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(*client)
    if alpn:
        ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")




Process = CliProcess  # the TLS tests' name for it


def context(ca: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """What an https client (httpx ``verify=``) trusts, and the certificate it presents."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(*client)
    return ctx


class TlsServer(Process):
    def __init__(self, folder: Path, pki: Pki, *extra: str, mtls: bool = False) -> None:
        self.pki, self.mtls = pki, mtls
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.http_port}"
        flags = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
        if mtls:
            flags += ["--tls-client-ca", str(pki.ca)]
        super().__init__(["serve", str(folder), "--http-port", str(self.http_port),
                          "--grpc-port", str(self.grpc_port), *flags, *extra],
                         folder.parent / f"server-{self.http_port}.log")

    def https(self) -> httpx.Client:
        client = (self.pki.client_cert, self.pki.client_key) if self.mtls else None
        return httpx.Client(base_url=self.url, verify=context(self.pki.ca, client), timeout=10)

    def wait_ready(self) -> TlsServer:
        def ready() -> bool:
            with self.https() as client:
                return client.get("/v2/health/ready").status_code == 200
        self.wait_for(ready, what="TLS model server")
        return self


def secure_channel(port: int, pki: Pki, *, client: bool = False) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client else None,
        certificate_chain=pki.client_cert.read_bytes() if client else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def server_ready(channel: grpc.Channel) -> bytes:
    return bytes(channel.unary_unary(READY)(b"", timeout=10))


def echo_models(root: Path) -> Path:
    """A models folder with ``m``: the test runtime's Echo (y = x) on FP32 rows of two."""
    (root / "m").mkdir(parents=True, exist_ok=True)
    (root / "m" / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": "turnout_test_runtimes:Echo",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    return root
