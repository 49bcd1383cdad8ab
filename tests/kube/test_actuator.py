"""The actuator and observer against a real API server: what they write, and that a reconcile
with nothing changed writes nothing."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from serving.control.kube.actuator import RETIRED, Kube, KubeActuator, KubeObserver, matches
from serving.control.kube.render import Owner, Settings
from serving.control.kube.resources import manifest
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import apply_manifest, rollback
from tests.kube.helpers import install_crds, isvc_body, new_namespace, set_ready

METRICS = """
# TYPE turnout_router_requests_total counter
turnout_router_requests_total{service="iris",variant="stable",protocol="rest",code="200"} 40
turnout_router_requests_total{service="iris",variant="canary",protocol="rest",code="500"} 3
# TYPE turnout_router_held_requests gauge
turnout_router_held_requests{service="iris",variant="canary"} 2
"""


@pytest.fixture(scope="module")
def kube(kube_api) -> Kube:
    k = Kube(kube_api.client())
    install_crds(k)
    return k


def _setup(kube: Kube, predictor: dict | None = None):
    namespace = new_namespace(kube)
    body = isvc_body("iris", "s3://models/iris", predictor=predictor)
    created = kube.create({**body, "metadata": {**body["metadata"], "namespace": namespace}})
    settings = Settings(namespace=namespace, hpa_api_version="autoscaling/v2beta2")
    actuator = KubeActuator(kube, settings, retire_seconds=0)
    actuator.services = {"iris": (manifest(created), Owner("iris", created["metadata"]["uid"]))}
    return namespace, created, settings, actuator


def test_creates_everything_and_a_second_reconcile_writes_nothing(kube: Kube) -> None:
    namespace, created, settings, actuator = _setup(kube, {
        "minReplicas": 1, "maxReplicas": 3, "scaleMetric": "cpu",
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris",
                  "resources": {"requests": {"cpu": "0.5", "memory": "256Mi"}}}})
    isvc = manifest(created)
    state = apply_manifest(None, isvc, now=0)
    desired = plan(services=[(isvc, state)], graphs=[], observed=Observed())
    before = len(kube.writes)
    asyncio.run(actuator.act(desired))
    written = kube.writes[before:]
    assert sorted((verb, kind, name) for verb, kind, name in written) == sorted([
        ("create", "Deployment", "iris-00001-predictor"),
        ("create", "Service", "iris-00001-predictor"),
        ("create", "HorizontalPodAutoscaler", "iris-00001-predictor"),
        ("create", "ConfigMap", "turnout-router-routes"),
        ("create", "Deployment", "turnout-router"), ("create", "Service", "turnout-router"),
        ("create", "NetworkPolicy", "turnout-router-predictors")])
    deployment = kube.get("apps/v1", "Deployment", namespace, "iris-00001-predictor")
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "256Mi"}
    hpa = kube.get("autoscaling/v2beta2", "HorizontalPodAutoscaler", namespace,
                   "iris-00001-predictor")
    assert hpa["spec"]["maxReplicas"] == 3
    # The HPA set replicas to 2: an autoscaled Deployment keeps them.
    kube.patch("apps/v1", "Deployment", namespace, "iris-00001-predictor", {"spec": {"replicas": 2}})
    # (Deployments and HPAs get status writes from the controller-manager: not compared.)
    versions = {k: kube.get(*k)["metadata"]["resourceVersion"] for k in [
        ("v1", "Service", namespace, "iris-00001-predictor"),
        ("v1", "ConfigMap", namespace, "turnout-router-routes"),
        ("v1", "Service", namespace, "turnout-router")]}
    before = len(kube.writes)
    asyncio.run(actuator.act(desired))
    assert kube.writes[before:] == []
    assert {k: kube.get(*k)["metadata"]["resourceVersion"] for k in versions} == versions
    # A hand edit of a field the controller owns is put back.
    kube.patch("v1", "Service", namespace, "iris-00001-predictor",
               {"spec": {"selector": {"serving.turnout.dev/revision": "other"}}})
    before = len(kube.writes)
    asyncio.run(actuator.act(desired))
    assert kube.writes[before:] == [("replace", "Service", "iris-00001-predictor")]
    assert kube.get("apps/v1", "Deployment", namespace,
                    "iris-00001-predictor")["spec"]["replicas"] == 2


def test_canary_split_then_rollback_deletes_the_canary(kube: Kube) -> None:
    namespace, created, settings, actuator = _setup(kube)
    first = manifest(created)
    state = apply_manifest(None, first, now=0)
    second = manifest({**created, "spec": {"predictor": {
        "canaryTrafficPercent": 30,
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris-v2"}}}})
    state = apply_manifest(state, second, now=1)
    actuator.services = {"iris": (second, actuator.services["iris"][1])}
    observer = KubeObserver(kube, settings, lambda: (METRICS, None))
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[], observed=Observed())))
    for name in ("iris-00001-predictor", "iris-00002-predictor"):
        set_ready(kube, namespace, name, 1)
    seen = asyncio.run(observer.observe(counters=True))
    assert set(seen.endpoints) == {"iris-00001", "iris-00002"}
    assert seen.endpoints["iris-00002"].http == [f"http://iris-00002-predictor.{namespace}.svc:8080"]
    assert seen.held == {("iris", "canary"): 2}
    assert seen.counters[("iris", "canary")].errors == 3
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[],
                                  observed=Observed(endpoints=seen.endpoints))))
    routes = yaml.safe_load(kube.get("v1", "ConfigMap", namespace, "turnout-router-routes")
                            ["data"]["routes.yaml"])
    assert [(v["name"], v["weight"]) for v in routes["services"][0]["variants"]] == \
        [("stable", 70), ("canary", 30)]
    # Rolled back: out of the routes, then (retire_seconds later) deleted.
    state = rollback(state, now=2, reason="test")
    actuator.retire_seconds = 3600
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[],
                                  observed=Observed(endpoints=seen.endpoints))))
    canary = kube.get("apps/v1", "Deployment", namespace, "iris-00002-predictor")
    assert RETIRED in canary["metadata"]["annotations"]
    routes = yaml.safe_load(kube.get("v1", "ConfigMap", namespace, "turnout-router-routes")
                            ["data"]["routes.yaml"])
    assert [v["name"] for v in routes["services"][0]["variants"]] == ["stable"]
    assert "iris-00002" not in asyncio.run(observer.observe(counters=False)).endpoints
    actuator.retire_seconds = 0
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[], observed=Observed())))
    assert kube.get("apps/v1", "Deployment", namespace, "iris-00002-predictor") is None
    assert kube.get("v1", "Service", namespace, "iris-00002-predictor") is None
    assert kube.get("apps/v1", "Deployment", namespace, "iris-00001-predictor") is not None


def test_scaled_object_for_scale_to_zero_and_failing_metrics(kube: Kube) -> None:
    namespace, created, settings, actuator = _setup(kube, {"minReplicas": 0, "maxReplicas": 2})
    isvc = manifest(created)
    state = apply_manifest(None, isvc, now=0)
    asyncio.run(actuator.act(plan(services=[(isvc, state)], graphs=[], observed=Observed())))
    scaled = kube.get("keda.sh/v1alpha1", "ScaledObject", namespace, "iris-00001-predictor")
    assert scaled["spec"]["minReplicaCount"] == 0
    assert kube.get("apps/v1", "Deployment", namespace,
                    "iris-00001-predictor")["spec"]["replicas"] == 0

    def broken():
        raise OSError("router unreachable")

    seen = asyncio.run(KubeObserver(kube, settings, broken).observe(counters=True))
    assert seen.counters is None and seen.held == {}


@pytest.mark.parametrize(("rendered", "live", "same"), [
    ({"a": 1}, {"a": 1, "b": 2}, True),
    ({"a": [1, 2]}, {"a": [1]}, False),
    ({"cpu": "0.5"}, {"cpu": "500m"}, True),
    ({"cpu": "1"}, {"cpu": "2"}, False),
    ({"x": "http"}, {"x": "grpc"}, False),
])
def test_matches(rendered, live, same) -> None:
    assert matches(rendered, live) is same
