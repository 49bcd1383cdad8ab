"""Test helpers for authentication: keys files, signing keys and JWKS (files, or served over
HTTP on loopback), tokens made with PyJWT, and ``turnout`` child processes."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.conftest import free_port
from tests.processes import CliProcess

ISSUER = "https://issuer.test"
AUDIENCE = "turnout-tests"
# Keys as clients hold them; the servers only ever see their hashes.
KEYS = {"alice": "tnt_alice_inference_key_0123456789abcdef",
        "bob": "tnt_bob_inference_key_0123456789abcdefgh",
        "ops": "tnt_ops_management_key_0123456789abcdefg",
        "rotated": "tnt_rotated_in_later_0123456789abcdefghi"}
ROW = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_file(path: Path, names: tuple[str, ...] = ("alice", "bob", "ops")) -> Path:
    """A keys file with one entry per name; ``ops`` has both scopes."""
    lines = ["# name:scopes:sha256"]
    for name in names:
        scopes = "inference,management" if name == "ops" else "inference"
        lines.append(f"{name}:{scopes}:{sha(KEYS[name])}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)  # as an operator's editor or a config management tool would
    return path


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def api_key(name: str) -> dict[str, str]:
    return {"x-api-key": KEYS[name]}


class Signer:
    """A signing key with its public JWK."""

    def __init__(self, kid: str, kind: str = "RSA") -> None:
        self.kid, self.kind = kid, kind
        if kind == "RSA":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
            self.jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            self.jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        self.jwk.update({"kid": kid, "use": "sig"})

    def token(self, *, sub: str = "svc-a", scope: str | list[str] | None = "inference",
              scope_claim: str = "scope", iss: str = ISSUER, aud: str = AUDIENCE,
              expires_in: float = 300, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": sub, "iss": iss, "aud": aud, "iat": now,
                                   "exp": now + int(expires_in), **claims}
        if scope is not None:
            payload[scope_claim] = scope
        return jwt.encode(payload, self.private, algorithm=self.alg,
                          headers={"kid": kid or self.kid})


def jwks_doc(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk for s in signers]}


def write_jwks(path: Path, *signers: Signer) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jwks_doc(*signers)))
    os.replace(tmp, path)
    return path


class JwksServer:
    """A JWKS served over HTTP on loopback; ``doc`` may be replaced at any time."""

    def __init__(self, *signers: Signer) -> None:
        self.doc = jwks_doc(*signers)
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.fetches += 1
                body = json.dumps(owner.doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def echo_models(root: Path) -> Path:
    """``m`` (echo, inline) and ``slow`` (thread pool): requests to both take the fast path,
    one answered in the protocol's callback, the other from a task."""
    for name, runtime, params in (("m", "Echo", {}), ("slow", "Slow", {"delay": 0.0})):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "model-settings.yaml").write_text(yaml.safe_dump({
            "runtime": f"turnout_test_runtimes:{runtime}", "parameters": params,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    return root


Child = CliProcess  # the auth tests' name for it


class Server(Child):
    """``turnout serve ROOT`` on free loopback ports with ``extra`` flags."""

    def __init__(self, root: Path, log_dir: Path, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        super().__init__(["serve", str(root), "--http-port", str(self.http_port),
                          "--grpc-port", str(self.grpc_port), *extra],
                         log_dir / f"server-{self.http_port}.log", env=env)

    def wait_ready(self) -> Server:
        self.wait_for(lambda: httpx.get(f"{self.url}/v2/health/ready", timeout=2)
                      .status_code == 200, what="turnout serve")
        return self


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def raw_http(port: int, request: bytes, *, responses: int = 1, timeout: float = 10
             ) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes on one connection; read ``responses`` answers (status, headers, body)."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        stream = sock.makefile("rb")
        for _ in range(responses):
            status_line = stream.readline()
            assert status_line.startswith(b"HTTP/1.1 "), status_line
            headers: dict[str, str] = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, value = line.decode().split(":", 1)
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers["content-length"]))
            answers.append((int(status_line.split()[1]), headers, body))
    return answers


def post(path: str, body: bytes, headers: dict[str, str] | None = None, *,
         chunked: bool = False) -> bytes:
    """A raw POST: with Content-Length (the fast path claims it) or chunked (it does not)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if chunked:
        head = f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n{extra}\r\n"
        return head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body
