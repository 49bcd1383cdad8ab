"""Authentication, TLS and the predictors' NetworkPolicy in what the controller writes: exact
args, volumes and probes per combination, the objects valid for Kubernetes' schemas, and the
controller config refusing values that cannot work (no API server)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from serving.control.kube import render
from serving.control.kube.config import ConfigError, load
from serving.control.kube.render import Owner, Settings
from serving.control.kube.secure import AuthSettings, TlsSettings
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import apply_manifest
from serving.spec import load_texts

NS = "ml"
BASE = Settings(namespace=NS, image="turnout:test", drain_seconds=20)
OWNER = Owner(name="iris", uid="uid-1")
KEYS = AuthSettings(api_keys_secret="turnout-keys")
JWT = AuthSettings(jwks_config_map="idp-jwks", jwt_issuer="https://idp.example",
                   jwt_audience="turnout", jwt_leeway_seconds=10)
ROOT = "/var/run/turnout"
SERVE_HEAD = ["serve", "s3://models/iris", "--name", "iris", "--runtime", "sklearn", "--host",
              "0.0.0.0", "--http-port", "8080", "--grpc-port", "8081", "--drain-seconds", "20"]
ROUTER_HEAD = ["router", "--config", "/etc/turnout/routes.yaml", "--host", "0.0.0.0",
               "--http-port", "8080", "--grpc-port", "8081", "--admin-host", "127.0.0.1",
               "--admin-port", "8090", "--drain-seconds", "20"]
KUBE_VERSIONS = ["1.25.0", "1.37.0"]


def manifest(extra: str = ""):
    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris}}
spec:
  predictor:
    model: {{modelFormat: {{name: sklearn}}, storageUri: "s3://models/iris"}}
{extra}
""")]).services[0]


def objects(settings: Settings, extra: str = "") -> dict[tuple[str, str], dict]:
    service = manifest(extra)
    state = apply_manifest(None, service, now=0)
    ready = {state.stable: render.endpoints(state.stable, settings)}
    desired = plan(services=[(service, state)], graphs=[], observed=Observed(endpoints=ready))
    got = render.render(desired, {"iris": (service, OWNER)}, settings)
    return {(o["kind"], o["metadata"]["name"]): o for o in got}


def container(objs: dict, name: str) -> dict:
    return objs[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]


def pod(objs: dict, name: str) -> dict:
    return objs[("Deployment", name)]["spec"]["template"]["spec"]


def secret(name: str, *keys: str) -> dict:
    return {"secret": {"secretName": name, "items": [{"key": k, "path": k} for k in keys]}}


def mount(volume: str) -> dict:
    return {"name": volume, "mountPath": f"{ROOT}/{volume}", "readOnly": True}


# -- defaults: --insecure, plain probes, the NetworkPolicy on -----------------------------------

def test_defaults_run_insecure_behind_the_network_policy() -> None:
    objs = objects(BASE)
    replica, router = container(objs, "iris-00001-predictor"), container(objs, "turnout-router")
    assert replica["args"] == [*SERVE_HEAD, "--insecure"]
    assert router["args"] == [*ROUTER_HEAD, "--insecure"]
    assert replica["readinessProbe"] == {"httpGet": {"path": "/v2/models/iris/ready",
                                                     "port": "http"},
                                         "periodSeconds": 2, "failureThreshold": 2}
    assert "volumeMounts" not in replica and "volumes" not in pod(objs, "iris-00001-predictor")
    assert ("NetworkPolicy", "turnout-router-predictors") in objs


# -- the router ---------------------------------------------------------------------------------

def test_router_with_keys_jwt_and_tls_drops_insecure_and_probes_https() -> None:
    auth = replace(KEYS, jwks_config_map=JWT.jwks_config_map, jwt_issuer=JWT.jwt_issuer,
                   jwt_audience=JWT.jwt_audience, jwt_leeway_seconds=10)
    objs = objects(replace(BASE, router_auth=auth, router_tls=TlsSettings("router-tls")))
    router = container(objs, "turnout-router")
    assert router["args"] == [
        *ROUTER_HEAD, "--api-keys-file", f"{ROOT}/api-keys/keys",
        "--jwks", f"{ROOT}/jwks/jwks.json", "--jwt-issuer", "https://idp.example",
        "--jwt-audience", "turnout", "--jwt-leeway", "10",
        "--tls-cert", f"{ROOT}/tls/tls.crt", "--tls-key", f"{ROOT}/tls/tls.key"]
    assert router["volumeMounts"] == [
        {"name": "routes", "mountPath": "/etc/turnout", "readOnly": True},
        mount("api-keys"), mount("jwks"), mount("tls")]
    assert pod(objs, "turnout-router")["volumes"] == [
        {"name": "routes", "configMap": {"name": "turnout-router-routes"}},
        {"name": "api-keys", **secret("turnout-keys", "keys")},
        {"name": "jwks", "configMap": {"name": "idp-jwks",
                                       "items": [{"key": "jwks.json", "path": "jwks.json"}]}},
        {"name": "tls", **secret("router-tls", "tls.crt", "tls.key")}]
    assert router["readinessProbe"] == {"httpGet": {"path": "/v2/health/ready", "port": "http",
                                                    "scheme": "HTTPS"}, "periodSeconds": 2}
    assert router["livenessProbe"] == {"httpGet": {"path": "/v2/health/live", "port": "http",
                                                   "scheme": "HTTPS"}, "periodSeconds": 10}
    # The replicas are untouched: still --insecure, plain, on the model's readiness path.
    assert container(objs, "iris-00001-predictor")["args"] == [*SERVE_HEAD, "--insecure"]


def test_router_tls_alone_keeps_insecure_and_a_jwks_url_mounts_nothing() -> None:
    objs = objects(replace(BASE, router_tls=TlsSettings("router-tls")))
    assert container(objs, "turnout-router")["args"][-5:] == [
        "--insecure", "--tls-cert", f"{ROOT}/tls/tls.crt", "--tls-key", f"{ROOT}/tls/tls.key"]
    url = AuthSettings(jwks_url="https://idp.example/jwks", jwt_issuer="i", jwt_audience="a")
    objs = objects(replace(BASE, router_auth=url))
    router = container(objs, "turnout-router")
    assert router["args"][-6:] == ["--jwks", "https://idp.example/jwks", "--jwt-issuer", "i",
                                   "--jwt-audience", "a"]
    assert [m["name"] for m in router["volumeMounts"]] == ["routes"]


def test_router_mtls_needs_the_ca_and_probes_by_tcp() -> None:
    objs = objects(replace(BASE, router_auth=KEYS,
                           router_tls=TlsSettings("router-tls", verify_clients=True)))
    router = container(objs, "turnout-router")
    assert router["args"][-6:] == ["--tls-cert", f"{ROOT}/tls/tls.crt", "--tls-key",
                                   f"{ROOT}/tls/tls.key", "--tls-client-ca", f"{ROOT}/tls/ca.crt"]
    assert pod(objs, "turnout-router")["volumes"][-1] == {
        "name": "tls", **secret("router-tls", "tls.crt", "tls.key", "ca.crt")}
    # The kubelet has no client certificate: a TCP connect is what it can check.
    assert router["readinessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 2}


# -- the replicas -------------------------------------------------------------------------------

def test_replica_tls_turns_endpoints_https_and_the_router_verifies_them() -> None:
    objs = objects(replace(BASE, server_tls=TlsSettings("replica-tls")))
    replica = container(objs, "iris-00001-predictor")
    assert replica["args"] == [*SERVE_HEAD, "--insecure", "--tls-cert", f"{ROOT}/tls/tls.crt",
                               "--tls-key", f"{ROOT}/tls/tls.key"]
    assert replica["volumeMounts"] == [mount("tls")]
    assert pod(objs, "iris-00001-predictor")["volumes"] == [
        {"name": "tls", **secret("replica-tls", "tls.crt", "tls.key")}]
    assert replica["readinessProbe"]["httpGet"] == {"path": "/v2/models/iris/ready",
                                                    "port": "http", "scheme": "HTTPS"}
    routes = yaml.safe_load(objs[("ConfigMap", "turnout-router-routes")]["data"]["routes.yaml"])
    variant = routes["services"][0]["variants"][0]
    assert variant["http"] == ["https://iris-00001-predictor.ml.svc:8080"]
    assert variant["grpc"] == ["grpcs://iris-00001-predictor.ml.svc:8081"]
    router = container(objs, "turnout-router")
    assert router["args"][-3:] == ["--insecure", "--upstream-ca", f"{ROOT}/upstream-tls/ca.crt"]
    assert pod(objs, "turnout-router")["volumes"][-1] == {
        "name": "upstream-tls", **secret("replica-tls", "ca.crt")}


def test_replica_auth_drops_insecure_and_is_probed_on_the_open_readiness() -> None:
    objs = objects(replace(BASE, server_auth=KEYS,
                           server_tls=TlsSettings("replica-tls", verify_clients=True)))
    replica = container(objs, "iris-00001-predictor")
    assert replica["args"] == [*SERVE_HEAD, "--api-keys-file", f"{ROOT}/api-keys/keys",
                               "--tls-cert", f"{ROOT}/tls/tls.crt", "--tls-key",
                               f"{ROOT}/tls/tls.key", "--tls-client-ca", f"{ROOT}/tls/ca.crt"]
    assert "--insecure" not in replica["args"]
    assert replica["volumeMounts"] == [mount("api-keys"), mount("tls")]
    assert replica["readinessProbe"] == {"tcpSocket": {"port": "http"}, "periodSeconds": 2,
                                         "failureThreshold": 2}
    # mTLS to the replicas: the router presents the replicas' Secret's certificate.
    router = container(objs, "turnout-router")
    assert router["args"][-6:] == ["--upstream-ca", f"{ROOT}/upstream-tls/ca.crt",
                                   "--upstream-cert", f"{ROOT}/upstream-tls/tls.crt",
                                   "--upstream-key", f"{ROOT}/upstream-tls/tls.key"]
    without_mtls = objects(replace(BASE, server_auth=KEYS, server_tls=TlsSettings("r")))
    assert container(without_mtls, "iris-00001-predictor")["readinessProbe"] == {
        "httpGet": {"path": "/v2/health/ready", "port": "http", "scheme": "HTTPS"},
        "periodSeconds": 2, "failureThreshold": 2}


# -- the NetworkPolicy --------------------------------------------------------------------------

PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_network_policy_admits_the_router_and_the_configured_peers_only() -> None:
    objs = objects(replace(BASE, network_policy_allow_from=(PROMETHEUS,)))
    policy = objs[("NetworkPolicy", "turnout-router-predictors")]
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "turnout-controller",
                                        "app.kubernetes.io/component": "predictor"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {
                                  "app.kubernetes.io/instance": "turnout-router",
                                  "app.kubernetes.io/component": "router"}}},
                              PROMETHEUS],
                     "ports": [{"protocol": "TCP", "port": 8080},
                               {"protocol": "TCP", "port": 8081}]}]}
    assert policy["metadata"]["ownerReferences"] == [OWNER.reference(controller=False)]
    # The selectors are the ones the pods carry: the router's and every revision's.
    router_pod = objs[("Deployment", "turnout-router")]["spec"]["template"]["metadata"]["labels"]
    replica_pod = objs[("Deployment", "iris-00001-predictor")]["spec"]["template"]["metadata"][
        "labels"]
    peer = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert peer.items() <= router_pod.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= replica_pod.items()
    assert not peer.items() <= replica_pod.items()
    assert ("NetworkPolicy", "turnout-router-predictors") not in objects(
        replace(BASE, network_policy=False))


# -- valid Kubernetes ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_combination_is_valid_kubernetes(version: str) -> None:
    combos = [
        BASE,
        replace(BASE, router_auth=replace(KEYS, jwks_secret="jwks", jwt_issuer="i",
                                          jwt_audience="a"),
                router_tls=TlsSettings("rt", verify_clients=True)),
        replace(BASE, router_auth=JWT, server_auth=KEYS,
                server_tls=TlsSettings("st", verify_clients=True),
                network_policy_allow_from=(PROMETHEUS, {"ipBlock": {"cidr": "10.0.0.0/8"}})),
    ]
    checked = 0
    for settings in combos:
        for obj in objects(settings).values():
            if obj["kind"] == "ScaledObject":
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: "
                            f"{'.'.join(map(str, err.path))}: {err.message}")
            checked += 1
    assert checked == 18  # 6 objects per combination: Deployment x2, Service x2, CM, policy


# -- the controller's config --------------------------------------------------------------------

def test_config_maps_onto_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "router": {"auth": {"apiKeysSecret": "keys", "jwt": {
                       "jwksUrl": "https://idp.example/jwks", "issuer": "https://idp.example",
                       "audience": "turnout", "leewaySeconds": 5}},
                   "tls": {"secretName": "router-tls", "verifyClients": False,
                           "controllerCAFile": "/etc/turnout/router-ca/ca.crt"}},
        "modelServer": {"auth": {"apiKeysSecret": "", "jwt": {"jwksSecret": "", "issuer": "",
                                                              "leewaySeconds": 30}},
                        "tls": {"secretName": "replica-tls", "verifyClients": True},
                        "networkPolicy": {"enabled": True, "allowFrom": [PROMETHEUS]}}}))
    got = load(path, Settings(namespace="ns"))
    assert got.router_auth == AuthSettings(api_keys_secret="keys",
                                           jwks_url="https://idp.example/jwks",
                                           jwt_issuer="https://idp.example",
                                           jwt_audience="turnout", jwt_leeway_seconds=5.0)
    assert got.router_tls == TlsSettings("router-tls")
    assert got.router_ca_file == "/etc/turnout/router-ca/ca.crt"
    assert got.server_auth == AuthSettings() and not got.server_auth.configured
    assert got.server_tls == TlsSettings("replica-tls", verify_clients=True)
    assert (got.network_policy, got.network_policy_allow_from) == (True, (PROMETHEUS,))
    path.write_text("modelServer: {networkPolicy: {enabled: false}}\n")
    assert load(path, Settings(namespace="ns")).network_policy is False


@pytest.mark.parametrize(("config", "message"), [
    ({"router": {"auth": {"apiKeySecret": "k"}}},
     r"router.auth: unknown keys \['apiKeySecret'\]"),
    ({"router": {"auth": {"apiKeysSecret": "Not_A_Name"}}},
     r"router.auth.apiKeysSecret: 'Not_A_Name' is not a Secret/ConfigMap name"),
    ({"router": {"auth": {"jwt": {"jwksSecret": "a", "jwksUrl": "https://x/j", "issuer": "i",
                                  "audience": "a"}}}},
     r"router.auth.jwt: one JWKS source, not \['jwksSecret', 'jwksUrl'\]"),
    ({"router": {"auth": {"jwt": {"jwksUrl": "http://idp/jwks", "issuer": "i",
                                  "audience": "a"}}}},
     r"router.auth.jwt.jwksUrl: 'http://idp/jwks' must be an https:// URL"),
    ({"modelServer": {"auth": {"jwt": {"jwksConfigMap": "j", "issuer": "i"}}}},
     "modelServer.auth.jwt: issuer and audience are required with a JWKS"),
    ({"router": {"auth": {"jwt": {"issuer": "i", "audience": "a"}}}},
     "router.auth.jwt: issuer/audience without a JWKS"),
    ({"router": {"auth": {"jwt": {"jwksSecret": "j", "issuer": "i", "audience": "a",
                                  "leewaySeconds": -1}}}},
     "router.auth.jwt.leewaySeconds must be seconds from 0 to 3600"),
    ({"router": {"tls": {"verifyClients": True}}},
     "router.tls.verifyClients needs secretName"),
    ({"modelServer": {"tls": {"secretName": "t", "verifyClients": "yes"}}},
     "modelServer.tls.verifyClients must be true or false, not 'yes'"),
    ({"modelServer": {"tls": "replica-tls"}}, "modelServer.tls must be a mapping"),
    ({"modelServer": {"networkPolicy": {"allowFrom": {"podSelector": {}}}}},
     "modelServer.networkPolicy.allowFrom must be a list of NetworkPolicyPeer objects"),
    ({"modelServer": {"networkPolicy": {"allowFrom": [{"namespace": "monitoring"}]}}},
     r"modelServer.networkPolicy.allowFrom\[0\]: .* is not a NetworkPolicyPeer"),
    ({"modelServer": {"networkPolicy": {"enabled": "no"}}},
     "modelServer.networkPolicy.enabled must be true or false"),
])
def test_config_refuses_what_cannot_work_naming_the_key(tmp_path: Path, config: dict,
                                                       message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=f"config.yaml: {message}"):
        load(path, Settings(namespace="ns"))


# -- what the controller says and reads about a TLS router ---------------------------------------

def test_status_urls_follow_the_routers_tls() -> None:
    from serving.control.kube import resources

    secured = replace(BASE, router_tls=TlsSettings("router-tls"))
    assert render.router_url(BASE) == "http://turnout-router.ml.svc:8080"
    assert render.router_url(secured) == "https://turnout-router.ml.svc:8080"
    state = apply_manifest(None, manifest(), now=0)
    status = resources.service_status({"metadata": {"name": "iris", "generation": 1}}, state,
                                      ready=set(), settings=secured, omitted=[])
    assert status["url"] == "https://turnout-router.ml.svc/v2/models/iris"
    assert status["address"]["url"] == "https://turnout-router.ml.svc:8080/v2/models/iris/infer"


def test_the_controller_reads_a_tls_routers_metrics_verifying_its_ca(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over https, trusting ``router_ca_file`` (the chart's controllerCASecret) and nothing
    else: a router whose certificate another CA signed is no reading."""
    import asyncio
    import http.server
    import ssl
    import threading

    import trustme

    from serving.control.kube.actuator import router_metrics_source

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other.crt"))

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"turnout_router_held_requests 0\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(render, "router_url",  # the Service's name, on loopback
                        lambda settings: f"https://localhost:{server.server_address[1]}")
    try:
        trusted = replace(BASE, router_tls=TlsSettings("rt"), router_ca_file=str(tmp_path / "ca.crt"))
        assert asyncio.run(router_metrics_source(trusted)()) == (
            "turnout_router_held_requests 0\n", None)
        other = replace(trusted, router_ca_file=str(tmp_path / "other.crt"))
        assert asyncio.run(router_metrics_source(other)()) == (None, None)
    finally:
        server.shutdown()
        server.server_close()
