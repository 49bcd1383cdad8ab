"""serving/transport/auth.py in-process: the keys file (formats, errors, rotation, a broken
rewrite keeps the keys before), JWT verification (issuer, audience, expiry and leeway, wrong
key, unknown key id, algorithm confusion, scopes from ``scope``/``scp``), header parsing, the
scope of each REST path and gRPC method, and the non-loopback refusal."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from serving.transport import auth
from serving.transport.auth import (
    AuthConfigError,
    Authenticator,
    AuthError,
    AuthFields,
    Guard,
    JwtVerifier,
    KeyStore,
    ScopeError,
    exposure_error,
    is_loopback,
    method_scope,
    parse_keys,
    path_scope,
)
from tests.security.auth_support import AUDIENCE, ISSUER, KEYS, Signer, keys_file, sha, write_jwks


@pytest.fixture(autouse=True)
def _no_reload_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "RELOAD_CHECK_SECONDS", 0.0)


@pytest.fixture(scope="module")
def rsa_key() -> Signer:
    return Signer("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> Signer:
    return Signer("ec-1", "EC")


def verifier(path: Path, leeway: float = 0) -> JwtVerifier:
    return JwtVerifier(str(path), issuer=ISSUER, audience=AUDIENCE, leeway=leeway)


# -- API keys ---------------------------------------------------------------------------------

def test_entries_in_each_form_give_names_and_scopes() -> None:
    digest = sha("k1")
    keys = parse_keys(f"# comment\n\n{digest}\nbob:{sha('k2')}\nops:management, inference:"
                      f"{sha('k3').upper()}\n", source="f")
    assert [(k.principal.name, sorted(k.principal.scopes)) for k in keys] == [
        (f"key-{digest[:8]}", ["inference"]), ("bob", ["inference"]),
        ("ops", ["inference", "management"])]


def test_bad_entries_are_refused_naming_their_line_and_never_a_key() -> None:
    with pytest.raises(AuthConfigError) as caught:
        parse_keys(f"alice:tnt_plaintext_key\nops:managment:{sha('x')}\n{sha('y')}\n{sha('y')}\n"
                   "a:b:c:d", source="keys.txt")
    message = str(caught.value)
    assert "keys.txt:1: not a SHA-256 in hex" in message
    assert "keys.txt:2: unknown scope(s) ['managment']" in message
    assert "keys.txt:5: expected HASH, NAME:HASH or NAME:SCOPES:HASH" in message
    assert "the same key hash appears twice" in message
    assert "tnt_plaintext_key" not in message


def test_a_keys_file_is_reread_when_it_changes_and_a_broken_one_keeps_the_keys_before(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = keys_file(tmp_path / "keys", ("alice",))
    store = KeyStore(path, f"bob:{sha(KEYS['bob'])}")  # plus a fixed entry (the variable)
    assert store.lookup(KEYS["alice"].encode()).name == "alice"
    assert store.lookup(KEYS["bob"].encode()).name == "bob"
    assert store.lookup(KEYS["ops"].encode()) is None
    keys_file(path, ("ops",))  # alice rotated out, ops in
    assert store.lookup(KEYS["alice"].encode()) is None
    principal = store.lookup(KEYS["ops"].encode())
    assert principal is not None and principal.scopes == {"inference", "management"}
    with caplog.at_level(logging.ERROR, "turnout.auth"):
        path.write_text("ops:inference:not-a-hash\n")
        for _ in range(3):
            assert store.lookup(KEYS["ops"].encode()).name == "ops"  # kept
        path.unlink()
        for _ in range(3):
            assert store.lookup(KEYS["ops"].encode()).name == "ops"  # kept
    assert caplog.text.count("keeping the API keys file read before") == 2  # once per change
    assert "keys:1: not a SHA-256 in hex (store the key's hash, never the key: `turnout api-key " \
        "hash`); keeping the API keys file read before" in caplog.text
    assert "No such file or directory; keeping the API keys file read before" in caplog.text


def test_a_missing_or_invalid_keys_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="No such file or directory"):
        KeyStore(tmp_path / "missing")
    with pytest.raises(AuthConfigError, match="API keys variable: entry 2: not a SHA-256"):
        KeyStore(None, f"{sha('a')} nothex")


def test_headers_bearer_and_x_api_key() -> None:
    authenticator = Authenticator([KeyStore(None, f"alice:{sha(KEYS['alice'])}")])
    for headers in ([(b"authorization", b"Bearer " + KEYS["alice"].encode())],
                    [(b"authorization", b"bearer   " + KEYS["alice"].encode())],
                    [(b"x-api-key", KEYS["alice"].encode())]):
        assert authenticator.from_headers(headers).name == "alice"
    assert authenticator.from_metadata([("x-api-key", KEYS["alice"])]).name == "alice"
    cases = {(): (REALM_ONLY := 'Bearer realm="turnout"', "credentials required"),
             ((b"authorization", b"Basic YWxpY2U6eA=="),): (INVALID, "unsupported Authorization"),
             ((b"authorization", b"Bearer "),): (INVALID, "unsupported Authorization"),
             ((b"x-api-key", b"tnt_wrong"),): (INVALID, "credentials not valid")}
    for headers, (challenge, message) in cases.items():
        with pytest.raises(AuthError) as caught:
            authenticator.from_headers(list(headers))
        assert caught.value.challenge == challenge and message in str(caught.value)
        assert caught.value.http_status == 401 and caught.value.grpc_code == "UNAUTHENTICATED"
    assert REALM_ONLY == auth.REALM


INVALID = 'Bearer realm="turnout", error="invalid_token"'


def test_the_guard_maps_paths_to_scopes_and_answers_rfc6750() -> None:
    authenticator = Authenticator([KeyStore(None, f"alice:{sha(KEYS['alice'])}")])
    guard = Guard(authenticator)
    alice = [(b"x-api-key", KEYS["alice"].encode())]
    assert guard.check("GET", "/v2/health/ready", []) is None
    assert guard.check("POST", "/v2/models/m/infer", alice) is None
    status, body, headers = guard.check("POST", "/v2/models/m/infer", [])
    assert (status, json.loads(body)) == (401, {"error": "credentials required: send "
                                                "Authorization: Bearer <key or token> or "
                                                "x-api-key: <key>"})
    assert dict(headers)[b"www-authenticate"] == b'Bearer realm="turnout"'
    status, body, headers = guard.check("POST", "/v2/repository/models/m/load", alice)
    assert (status, json.loads(body)) == (403, {"error": "credential 'alice' lacks the "
                                                "'management' scope"})
    assert dict(headers)[b"www-authenticate"] == \
        b'Bearer realm="turnout", error="insufficient_scope", scope="management"'


@pytest.mark.parametrize(("path", "scope"), [
    ("/", None), ("/metrics", None), ("/v2/health/live", None), ("/v2/health/ready", None),
    ("/v2", "inference"), ("/v2/models/m", "inference"), ("/v2/models/m/ready", "inference"),
    ("/v2/models/m/infer", "inference"), ("/v1/models/m:predict", "inference"),
    ("/v1/models", "inference"), ("/v2/health/live/", "inference"), ("/nope", "inference"),
    ("/v2/repository/index", "management"), ("/v2/repository/models/m/load", "management")])
def test_path_scopes(path: str, scope: str | None) -> None:
    assert path_scope("GET", path) == scope


@pytest.mark.parametrize(("method", "scope"), [
    ("/grpc.health.v1.Health/Check", None), ("/grpc.health.v1.Health/Watch", None),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None),
    ("/inference.GRPCInferenceService/ServerLive", None),
    ("/inference.GRPCInferenceService/ServerReady", None),
    ("/inference.GRPCInferenceService/ModelInfer", "inference"),
    ("/inference.GRPCInferenceService/ModelReady", "inference"),
    ("/inference.GRPCInferenceService/ServerMetadata", "inference"),
    ("/inference.GRPCInferenceService/RepositoryIndex", "management"),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", "management"),
    ("/other.Service/Method", "inference")])
def test_method_scopes(method: str, scope: str | None) -> None:
    assert method_scope(method) == scope


# -- JWT --------------------------------------------------------------------------------------

def test_valid_rsa_and_ec_tokens_give_their_subject_and_scopes(
        tmp_path: Path, rsa_key: Signer, ec_key: Signer) -> None:
    check = verifier(write_jwks(tmp_path / "jwks.json", rsa_key, ec_key))
    principal = check.verify(rsa_key.token(sub="svc-a", scope="inference management"))
    assert (principal.name, principal.scopes, principal.kind) == (
        "svc-a", {"inference", "management"}, "jwt")
    principal = check.verify(ec_key.token(sub="svc-b", scope=["inference"], scope_claim="scp"))
    assert (principal.name, principal.scopes) == ("svc-b", {"inference"})
    assert check.verify(ec_key.token(scope=None)).scopes == frozenset()


@pytest.mark.parametrize(("claims", "message"), [
    ({"expires_in": -120}, "token expired"),
    ({"iss": "https://other.test"}, "token issuer not accepted"),
    ({"aud": "another-app"}, "token audience not accepted"),
    ({"nbf": int(time.time()) + 3600}, "token not valid yet"),
    ({"kid": "nobody"}, "token signed by an unknown key"),
])
def test_tokens_refused_with_reasons(tmp_path: Path, rsa_key: Signer, claims: dict,
                                     message: str) -> None:
    check = verifier(write_jwks(tmp_path / "jwks.json", rsa_key))
    token = rsa_key.token(**claims)
    with pytest.raises(AuthError) as caught:
        check.verify(token)
    assert str(caught.value) == message
    assert caught.value.challenge == INVALID


def test_leeway_admits_a_token_expired_within_it(tmp_path: Path, rsa_key: Signer) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key)
    token = rsa_key.token(expires_in=-20)
    with pytest.raises(AuthError, match="token expired"):
        verifier(path, leeway=0).verify(token)
    assert verifier(path, leeway=60).verify(token).name == "svc-a"


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
        tmp_path: Path, rsa_key: Signer) -> None:
    check = verifier(write_jwks(tmp_path / "jwks.json", rsa_key))
    forger = Signer("rsa-1")  # same kid, another private key
    with pytest.raises(AuthError, match="token signature not valid"):
        check.verify(forger.token())


def test_required_claims(tmp_path: Path, rsa_key: Signer) -> None:
    check = verifier(write_jwks(tmp_path / "jwks.json", rsa_key))
    no_exp = jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE}, rsa_key.private,
                        algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(AuthError, match="token lacks the 'exp' claim"):
        check.verify(no_exp)


def test_alg_none_and_hmac_with_the_public_key_are_refused(tmp_path: Path,
                                                           rsa_key: Signer) -> None:
    check = verifier(write_jwks(tmp_path / "jwks.json", rsa_key))
    now = int(time.time())
    claims = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300,
              "scope": "inference management"}

    def b64(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'kid': 'rsa-1'})}.{b64(claims)}."
    with pytest.raises(AuthError, match="token algorithm not accepted for its key"):
        check.verify(unsigned)
    # The classic confusion: HS256 keyed with the RSA public key, which is public.
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    import hmac
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'rsa-1', 'typ': 'JWT'})}.{b64(claims)}"
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(),
                                                  hashlib.sha256).digest()).rstrip(b"=").decode()
    with pytest.raises(AuthError, match="token algorithm not accepted for its key"):
        check.verify(f"{signing_input}.{signature}")


def test_a_jwks_file_is_reread_when_it_changes(tmp_path: Path, rsa_key: Signer,
                                               ec_key: Signer) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key)
    check = verifier(path)
    token = rsa_key.token()
    assert check.verify(token).name == "svc-a"
    with pytest.raises(AuthError, match="unknown key"):
        check.verify(ec_key.token())
    write_jwks(path, ec_key)  # the issuer rotated its key: rsa-1 is gone
    assert check.verify(ec_key.token(sub="svc-b")).name == "svc-b"
    with pytest.raises(AuthError, match="unknown key"):  # even the cached token
        check.verify(token)


def test_verified_tokens_are_cached_until_expiry(tmp_path: Path, rsa_key: Signer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    check = verifier(write_jwks(tmp_path / "jwks.json", rsa_key))
    token = rsa_key.token(expires_in=2)
    calls = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(5):
        assert check.verify(token).name == "svc-a"
    assert len(calls) == 1
    time.sleep(2.1)
    with pytest.raises(AuthError, match="token expired"):
        check.verify(token)


def test_jwks_settings_need_issuer_and_audience(tmp_path: Path, rsa_key: Signer) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key)
    with pytest.raises(AuthConfigError, match="--jwks needs --jwt-issuer and --jwt-audience"):
        auth.build_authenticator(AuthFields.model_construct(jwks=str(path), jwt_issuer=ISSUER))
    (tmp_path / "bad.json").write_text('{"kid": 1}')
    with pytest.raises(AuthConfigError, match=r"expected \{\"keys\": \[...\]\}"):
        auth.check_auth_settings(AuthFields.model_construct(
            jwks=str(tmp_path / "bad.json"), jwt_issuer=ISSUER, jwt_audience=AUDIENCE))
    assert auth.build_authenticator(AuthFields.model_construct()) is None


def test_scope_error_and_auth_error_map_to_http_and_grpc() -> None:
    principal = auth.Principal("alice", frozenset({"inference"}), "api-key")
    with pytest.raises(ScopeError) as caught:
        principal.require("management")
    assert (caught.value.http_status, caught.value.grpc_code) == (403, "PERMISSION_DENIED")


# -- where a process may listen --------------------------------------------------------------

@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("example.com", False)])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_without_auth_is_refused_unless_insecure(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    assert exposure_error("turnout serve", ["127.0.0.1"], AuthFields.model_construct()) is None
    refused = exposure_error("turnout serve", ["0.0.0.0"], AuthFields.model_construct())
    assert refused == ("turnout serve: refusing to listen on 0.0.0.0 without authentication; "
                       "configure --api-keys-file or --jwks (docs/security.md), bind 127.0.0.1, "
                       "or pass --insecure if the network is protected otherwise")
    keys = keys_file(tmp_path / "keys")
    assert exposure_error("turnout serve", ["0.0.0.0"],
                          AuthFields.model_construct(api_keys_file=keys)) is None
    with caplog.at_level(logging.WARNING, "turnout.auth"):
        assert exposure_error("turnout router", ["0.0.0.0"],
                              AuthFields.model_construct(insecure=True)) is None
    assert "turnout router listens on 0.0.0.0 without authentication (--insecure)" in caplog.text


def test_settings_come_from_turnout_variables(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    from router.settings import RouterSettings
    from serving.server.settings import ServerSettings

    monkeypatch.setenv("TURNOUT_API_KEYS_FILE", str(tmp_path / "server-keys"))
    monkeypatch.setenv("TURNOUT_INSECURE", "true")
    monkeypatch.setenv("TURNOUT_ROUTER_JWKS", "https://idp.test/jwks")
    monkeypatch.setenv("TURNOUT_ROUTER_JWT_LEEWAY", "5")
    server = ServerSettings()
    assert (server.api_keys_file, server.insecure, server.jwks) == (
        tmp_path / "server-keys", True, None)
    router = RouterSettings(config=tmp_path / "routes.yaml")
    assert (router.jwks, router.jwt_leeway, router.api_keys_file, router.insecure) == (
        "https://idp.test/jwks", 5.0, None, False)
    assert os.environ["TURNOUT_INSECURE"] == "true"


# -- spec.turnout.auth → the router's routes ---------------------------------------------------

def test_spec_turnout_auth_reaches_the_service_and_its_tag_routes() -> None:
    from serving.control.policy.revisions import apply_manifest
    from serving.control.policy.routes import Endpoints, router_config
    from serving.spec import load_texts

    isvc = load_texts([(Path("m.yaml"), """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  annotations: {serving.kserve.io/enable-tag-routing: "true"}
spec:
  predictor:
    model: {modelFormat: {name: sklearn}, storageUri: /models/iris}
  turnout:
    auth: {principals: [ci, svc-a]}
""")]).services[0]
    state = apply_manifest(None, isvc, now=1)
    plan = router_config(services=[(isvc, state)], graphs=[], endpoints={
        "iris-00001": Endpoints(["http://127.0.0.1:1"], ["127.0.0.1:2"])})
    assert {s.name: s.auth.principals for s in plan.config.services} == {
        "iris": ["ci", "svc-a"], "latest-iris": ["ci", "svc-a"]}
    with pytest.raises(Exception, match="principals"):
        load_texts([(Path("m.yaml"), """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor: {model: {modelFormat: {name: sklearn}, storageUri: /models/iris}}
  turnout: {auth: {principals: []}}
""")])
