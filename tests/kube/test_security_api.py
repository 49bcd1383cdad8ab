"""Authentication, TLS and the NetworkPolicy against a real API server: the controller's objects
are accepted as rendered (volumes, mounts, probes), the NetworkPolicy's selectors pick exactly
the predictor pods and, as peers, exactly the router's pods among the pods the
controller-manager made, a reconcile with nothing changed writes nothing, turning the policy off
removes it, and per-service principals without router authentication are refused."""

from __future__ import annotations

import asyncio

import pytest

from serving.control.kube.actuator import Kube
from serving.control.kube.controller import Controller
from serving.control.kube.render import API_VERSION, Settings
from serving.control.kube.secure import AuthSettings, TlsSettings
from tests.kube.helpers import install_crds, isvc_body, new_namespace, wait_for

PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
SECURE = Settings(namespace="", router_auth=AuthSettings(api_keys_secret="turnout-keys"),
                  router_tls=TlsSettings("router-tls"),
                  server_auth=AuthSettings(api_keys_secret="turnout-keys"),
                  server_tls=TlsSettings("replica-tls", verify_clients=True),
                  network_policy_allow_from=(PROMETHEUS,))
POLICY = "turnout-router-predictors"


@pytest.fixture(scope="module")
def kube(kube_api) -> Kube:
    k = Kube(kube_api.client())
    install_crds(k)
    return k


def _no_metrics(settings: Settings):
    return lambda: (None, None)


def _controller(kube: Kube, settings: Settings) -> Controller:
    return Controller(kube, settings, metrics=_no_metrics, retire_seconds=0)


def _create(kube: Kube, namespace: str, name: str, turnout: dict | None = None) -> dict:
    body = isvc_body(name, f"s3://models/{name}")
    body["metadata"]["namespace"] = namespace
    if turnout is not None:
        body["spec"]["turnout"] = turnout
    return kube.create(body)


def _selected(kube: Kube, namespace: str, match_labels: dict[str, str]) -> set[str]:
    """The pods a selector picks, as the API server evaluates label selectors."""
    query = ",".join(f"{k}={v}" for k, v in match_labels.items())
    return {p["metadata"]["name"] for p in kube.list("v1", "Pod", namespace, query)}


def _pod(kube: Kube, namespace: str, name: str, labels: dict[str, str]) -> None:
    kube.create({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": name, "namespace": namespace, "labels": labels},
                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}})


def test_secured_objects_are_accepted_and_the_policy_admits_exactly_the_router(
        kube: Kube) -> None:
    namespace = new_namespace(kube)
    controller = _controller(kube, SECURE)
    asyncio.run(controller.applied(_create(kube, namespace, "iris",
                                           {"auth": {"principals": ["alice"]}})))
    asyncio.run(controller.applied(_create(kube, namespace, "wine")))

    router = kube.get("apps/v1", "Deployment", namespace, "turnout-router")
    container = router["spec"]["template"]["spec"]["containers"][0]
    assert "--insecure" not in container["args"]
    root = "/var/run/turnout"
    assert container["args"][-12:] == [
        "--api-keys-file", f"{root}/api-keys/keys",
        "--tls-cert", f"{root}/tls/tls.crt", "--tls-key", f"{root}/tls/tls.key",
        "--upstream-ca", f"{root}/upstream-tls/ca.crt",
        "--upstream-cert", f"{root}/upstream-tls/tls.crt",
        "--upstream-key", f"{root}/upstream-tls/tls.key"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "turnout-keys"
    assert volumes["tls"]["secret"]["secretName"] == "router-tls"
    assert volumes["upstream-tls"]["secret"]["secretName"] == "replica-tls"
    replica = kube.get("apps/v1", "Deployment", namespace, "iris-00001-predictor")
    replica_container = replica["spec"]["template"]["spec"]["containers"][0]
    assert "--insecure" not in replica_container["args"]
    assert replica_container["readinessProbe"]["tcpSocket"] == {"port": "http"}

    # The pods the controller-manager made from the Deployments, plus strangers.
    component = {"app.kubernetes.io/component": "predictor"}
    predictors = wait_for(lambda: p if len(p := _selected(kube, namespace, component)) == 2
                          else None)
    routers = wait_for(lambda: _selected(kube, namespace, {
        "app.kubernetes.io/instance": "turnout-router"}) or None)
    assert len(predictors) == 2 and len(routers) == SECURE.router_replicas
    _pod(kube, namespace, "curl", {"app": "curl"})
    _pod(kube, namespace, "other-router", {"app.kubernetes.io/instance": "other-router",
                                           "app.kubernetes.io/component": "router"})
    _pod(kube, namespace, "hand-made-predictor", {"app.kubernetes.io/component": "predictor"})

    policy = kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, POLICY)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert _selected(kube, namespace, spec["podSelector"]["matchLabels"]) == predictors
    (rule,) = spec["ingress"]
    assert [p["port"] for p in rule["ports"]] == [8080, 8081]
    router_peer, prometheus = rule["from"]
    assert _selected(kube, namespace, router_peer["podSelector"]["matchLabels"]) == routers
    assert prometheus == PROMETHEUS
    assert {r["name"] for r in policy["metadata"]["ownerReferences"]} == {"iris", "wine"}

    # Nothing changed: nothing is written (the server's defaults do not count as changes).
    before = len(kube.writes)
    asyncio.run(controller.changed(namespace))
    assert kube.writes[before:] == []

    # The policy turned off: the controller removes the one it made.
    open_ = _controller(kube, Settings(**{**SECURE.__dict__, "network_policy": False}))
    asyncio.run(open_.changed(namespace))
    assert kube.get("networking.k8s.io/v1", "NetworkPolicy", namespace, POLICY) is None
    assert kube.list("networking.k8s.io/v1", "NetworkPolicy", namespace) == []
    before = len(kube.writes)
    asyncio.run(open_.changed(namespace))  # and, gone, nothing more is written
    assert kube.writes[before:] == []
    assert kube.get("apps/v1", "Deployment", namespace, "turnout-router") is not None


def test_per_service_principals_without_router_authentication_are_refused(kube: Kube) -> None:
    namespace = new_namespace(kube)
    controller = _controller(kube, Settings(namespace=""))
    asyncio.run(controller.applied(_create(kube, namespace, "iris",
                                           {"auth": {"principals": ["alice"]}})))
    status = kube.get(API_VERSION, "InferenceService", namespace, "iris")["status"]
    (ready,) = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.turnout.auth names principals, but the namespace's router authenticates " \
        "no one: set the chart's runtime.router.auth" in ready["message"]
    assert kube.get("apps/v1", "Deployment", namespace, "iris-00001-predictor") is None
