"""The controller with ``storageUri: models:/...`` against a real API server and a real MLflow
registry (SQLite): the pinned version's object-store location reaches the pods, a moved alias
becomes a canary on the resource's timer, a version pods cannot fetch is a Ready=False reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.control.kube.actuator import Kube
from serving.control.kube.controller import Controller
from serving.control.kube.render import API_VERSION, Settings
from serving.control.registry import RegistryLink
from tests.kube.helpers import install_crds, isvc_body, new_namespace, set_ready
from tests.kube.test_controller import Clock, Feed


@pytest.fixture(scope="module")
def kube(kube_api) -> Kube:
    k = Kube(kube_api.client())
    install_crds(k)
    return k


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('kube-registry') / 'registry.db'}"


def _client(tracking_uri: str):  # noqa: ANN202 - MLflow's client
    from upstream.registry import Registry

    Registry(tracking_uri)  # the environment MLflow needs (telemetry off, its logging alone)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _container_args(kube: Kube, namespace: str, deployment: str) -> list[str]:
    body = kube.get("apps/v1", "Deployment", namespace, deployment)
    assert body is not None, deployment
    return body["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_followed_alias_pins_its_object_store_version_and_a_move_is_a_canary(
        kube: Kube, tracking_uri: str) -> None:
    client = _client(tracking_uri)
    client.create_registered_model("fraud")
    one = client.create_model_version("fraud", source="s3://models/fraud/1")
    client.set_registered_model_alias("fraud", "champion", one.version)
    namespace = new_namespace(kube)
    clock = Clock()
    controller = Controller(kube, Settings(namespace=""), metrics=Feed().source, retire_seconds=0,
                            clock=clock, registry=RegistryLink(tracking_uri=tracking_uri),
                            registry_poll=30)
    body = kube.create({**isvc_body("fraud", "models:/fraud@champion",
                                    predictor={"canaryTrafficPercent": 20}),
                        "metadata": {"name": "fraud", "namespace": namespace}})
    asyncio.run(controller.applied(body))
    args = _container_args(kube, namespace, "fraud-00001-predictor")
    assert args[:2] == ["serve", "s3://models/fraud/1"]
    assert args[args.index("--model-version") + 1] == str(one.version)
    state = kube.get(API_VERSION, "InferenceService", namespace, "fraud")["status"]["turnout"]
    assert state["revisions"]["fraud-00001"]["pinned_uri"] == f"models:/fraud/{one.version}"
    set_ready(kube, namespace, "fraud-00001-predictor")

    two = client.create_model_version("fraud", source="s3://models/fraud/2")
    client.set_registered_model_alias("fraud", "champion", two.version)
    live = kube.get(API_VERSION, "InferenceService", namespace, "fraud")
    asyncio.run(controller.tick(live))                     # polled too recently: nothing yet
    assert kube.get("apps/v1", "Deployment", namespace, "fraud-00002-predictor") is None
    clock.now += 31
    asyncio.run(controller.tick(kube.get(API_VERSION, "InferenceService", namespace, "fraud")))
    args = _container_args(kube, namespace, "fraud-00002-predictor")
    assert args[:2] == ["serve", "s3://models/fraud/2"]
    assert args[args.index("--model-version") + 1] == str(two.version)
    state = kube.get(API_VERSION, "InferenceService", namespace, "fraud")["status"]["turnout"]
    assert (state["stable"], state["canary"], state["percent"]) == ("fraud-00001", "fraud-00002", 20)


def test_a_version_pods_cannot_fetch_or_an_unknown_alias_is_a_ready_false_reason(
        kube: Kube, tracking_uri: str, tmp_path: Path) -> None:
    client = _client(tracking_uri)
    client.create_registered_model("local")
    version = client.create_model_version("local", source=str(tmp_path))
    client.set_registered_model_alias("local", "champion", version.version)
    namespace = new_namespace(kube)
    controller = Controller(kube, Settings(namespace=""), metrics=Feed().source, retire_seconds=0,
                            clock=Clock(), registry=RegistryLink(tracking_uri=tracking_uri))
    for name, uri, words in [("local", "models:/local@champion", "pods cannot fetch"),
                             ("ghost", "models:/local@nobody", "nobody")]:
        body = kube.create({**isvc_body(name, uri), "metadata": {"name": name,
                                                                  "namespace": namespace}})
        asyncio.run(controller.applied(body))
        live = kube.get(API_VERSION, "InferenceService", namespace, name)
        ready = {c["type"]: c for c in live["status"]["conditions"]}["Ready"]
        assert ready["status"] == "False" and words in ready["message"], ready
    assert kube.list("apps/v1", "Deployment", namespace) == []
