"""Transformers against a real API server: the actuator writes them per revision, the observer
routes through a transformer once it and its predictor are ready, and a revision's transformer
is retired with it."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from serving.control.kube.actuator import Kube, KubeActuator, KubeObserver
from serving.control.kube.render import Owner, Settings
from serving.control.kube.resources import manifest
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import apply_manifest, rollback
from tests.kube.helpers import install_crds, isvc_body, new_namespace, set_ready

TRANSFORMER = {"turnout": {"modelClass": "transformer:CsvToIris", "storageUri": "s3://code/tr",
                           "protocol": "grpc-v2"}}


@pytest.fixture(scope="module")
def kube(kube_api) -> Kube:
    k = Kube(kube_api.client())
    install_crds(k)
    return k


def test_transformers_are_written_observed_routed_and_retired(kube: Kube) -> None:
    namespace = new_namespace(kube)
    body = isvc_body("iris", "s3://models/iris")
    body["spec"]["transformer"] = TRANSFORMER
    created = kube.create({**body, "metadata": {**body["metadata"], "namespace": namespace}})
    assert created["spec"]["transformer"] == TRANSFORMER  # the CRD's schema keeps it whole
    settings = Settings(namespace=namespace, hpa_api_version="autoscaling/v2beta2")
    actuator = KubeActuator(kube, settings, retire_seconds=0)
    owner = Owner("iris", created["metadata"]["uid"])
    first = manifest(created)
    state = apply_manifest(None, first, now=0)
    second = manifest({**created, "spec": {**created["spec"], "predictor": {
        "canaryTrafficPercent": 30,
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris-v2"}}}})
    state = apply_manifest(state, second, now=1)
    actuator.services = {"iris": (second, owner)}
    observer = KubeObserver(kube, settings, lambda: (None, None))
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[], observed=Observed())))
    for name in ("iris-00001-transformer", "iris-00002-transformer"):
        deployment = kube.get("apps/v1", "Deployment", namespace, name)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        revision = name.removesuffix("-transformer")
        assert args[args.index("--transformer-for") + 1] == \
            f"{revision}-predictor.{namespace}.svc:8081"
        assert kube.get("v1", "Service", namespace, name) is not None

    # predictors ready, transformers not yet: nothing routable, the router holds
    for name in ("iris-00001-predictor", "iris-00002-predictor", "iris-00001-transformer"):
        set_ready(kube, namespace, name, 1)
    seen = asyncio.run(observer.observe(counters=False))
    assert set(seen.endpoints) == {"iris-00001", "iris-00002", "iris-00001-transformer"}
    assert seen.endpoints["iris-00001-transformer"].http == [
        f"http://iris-00001-transformer.{namespace}.svc:8080"]
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[],
                                  observed=Observed(endpoints=seen.endpoints))))
    routes = yaml.safe_load(kube.get("v1", "ConfigMap", namespace, "turnout-router-routes")
                            ["data"]["routes.yaml"])
    variants = {v["name"]: v["http"] for v in routes["services"][0]["variants"]}
    assert variants == {"stable": [f"http://iris-00001-transformer.{namespace}.svc:8080"]}

    # rolled back: the canary's predictor and transformer go together
    state = rollback(state, now=2, reason="test")
    asyncio.run(actuator.act(plan(services=[(second, state)], graphs=[],
                                  observed=Observed(endpoints=seen.endpoints))))
    for kind, api in (("Deployment", "apps/v1"), ("Service", "v1")):
        assert kube.get(api, kind, namespace, "iris-00002-transformer") is None
        assert kube.get(api, kind, namespace, "iris-00002-predictor") is None
        assert kube.get(api, kind, namespace, "iris-00001-transformer") is not None
    policies = {p["metadata"]["name"] for p in kube.list(
        "networking.k8s.io/v1", "NetworkPolicy", namespace, "")}
    assert policies == {"turnout-router-predictors", "turnout-router-transformers",
                        "turnout-router-predictors-from-transformers"}
