"""The controller against a real API server: the same plan and rollout as ``turnout up``, with
the revision state in the resource's status."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import yaml

from serving.control.kube.actuator import Kube
from serving.control.kube.controller import Controller, register
from serving.control.kube.render import API_VERSION, Settings
from tests.kube.helpers import install_crds, isvc_body, new_namespace, set_ready, wait_for

ROLLOUT = {"rollout": {"steps": [10, 50, 100], "interval": "30s",
                       "analysis": {"minRequests": 20, "maxErrorRate": 0.05, "maxHolds": 3}}}


@pytest.fixture(scope="module")
def kube(kube_api) -> Kube:
    k = Kube(kube_api.client())
    install_crds(k)
    return k


class Feed:
    """The router as the observer sees it: counters the test moves on."""

    def __init__(self) -> None:
        self.counts = {"stable": [0, 0], "canary": [0, 0]}  # requests, errors
        self.broken = False

    def serve(self, stable: int, canary: int, canary_errors: int = 0) -> None:
        self.counts["stable"][0] += stable
        self.counts["canary"][0] += canary
        self.counts["canary"][1] += canary_errors

    def source(self, settings: Settings):
        def read():
            if self.broken:
                raise OSError("router unreachable")
            lines = ["# TYPE turnout_router_requests_total counter"]
            for variant, (requests, errors) in self.counts.items():
                lines.append(f'turnout_router_requests_total{{service="iris",variant="{variant}",'
                             f'protocol="rest",code="200"}} {requests - errors}')
                lines.append(f'turnout_router_requests_total{{service="iris",variant="{variant}",'
                             f'protocol="rest",code="500"}} {errors}')
            return "\n".join(lines) + "\n", None
        return read


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _controller(kube: Kube, feed: Feed, clock: Clock) -> Controller:
    return Controller(kube, Settings(namespace=""), metrics=feed.source, retire_seconds=0,
                      clock=clock)


def _isvc(kube: Kube, namespace: str, name: str = "iris") -> dict:
    return kube.get(API_VERSION, "InferenceService", namespace, name)


def _routes(kube: Kube, namespace: str) -> list[tuple[str, int]]:
    doc = yaml.safe_load(kube.get("v1", "ConfigMap", namespace, "turnout-router-routes")
                         ["data"]["routes.yaml"])
    return [(v["name"], v["weight"]) for v in doc["services"][0]["variants"]]


def _conditions(body: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("message", "")) for c in body["status"]["conditions"]}


def _update(kube: Kube, namespace: str, spec: dict, annotations: dict | None = None) -> dict:
    live = _isvc(kube, namespace)
    live["spec"] = spec
    if annotations is not None:
        live["metadata"]["annotations"] = annotations
    return kube.replace(live)


def test_progressive_rollout_advances_rolls_back_and_resumes_after_a_restart(kube: Kube) -> None:
    namespace = new_namespace(kube)
    feed, clock = Feed(), Clock()
    controller = _controller(kube, feed, clock)
    rollout = {"serving.turnout.dev/spec": yaml.safe_dump(ROLLOUT)}
    body = kube.create({**isvc_body("iris", "s3://models/iris-v1", annotations=rollout),
                        "metadata": {"name": "iris", "namespace": namespace,
                                     "annotations": rollout}})
    asyncio.run(controller.applied(body))
    set_ready(kube, namespace, "iris-00001-predictor")
    asyncio.run(controller.tick(_isvc(kube, namespace)))
    status = _isvc(kube, namespace)["status"]
    assert _conditions(_isvc(kube, namespace))["Ready"][0] == "True"
    assert status["url"] == f"http://turnout-router.{namespace}.svc/v2/models/iris"
    assert status["observedGeneration"] == 1
    # A second reconcile with nothing changed writes nothing, status included.
    before = len(kube.writes)
    asyncio.run(controller.changed(namespace))
    asyncio.run(controller.tick(_isvc(kube, namespace)))
    assert kube.writes[before:] == []

    # A new model: the progressive rollout starts at the first step.
    body = _update(kube, namespace, {"predictor": {"model": {
        "modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris-v2"}}})
    asyncio.run(controller.applied(body))
    assert kube.get("apps/v1", "Deployment", namespace, "iris-00002-predictor") is not None
    set_ready(kube, namespace, "iris-00002-predictor")
    asyncio.run(controller.tick(_isvc(kube, namespace)))   # canary ready: the window starts
    assert _routes(kube, namespace) == [("stable", 90), ("canary", 10)]
    status = _isvc(kube, namespace)["status"]
    assert (status["canaryTrafficPercent"], status["rolloutStep"]) == (10, 10)
    assert _conditions(_isvc(kube, namespace))["RolloutProgressing"][0] == "True"

    feed.serve(stable=200, canary=25)                       # passing metrics
    clock.now += 31
    asyncio.run(controller.tick(_isvc(kube, namespace)))
    assert _routes(kube, namespace) == [("stable", 50), ("canary", 50)]
    assert _isvc(kube, namespace)["status"]["rolloutStep"] == 50

    # The controller restarts mid-rollout: a new one resumes from the status.
    controller = _controller(kube, feed, clock)
    asyncio.run(controller.applied(_isvc(kube, namespace)))   # kopf's resume
    assert _routes(kube, namespace) == [("stable", 50), ("canary", 50)]
    feed.serve(stable=100, canary=100, canary_errors=30)    # failing metrics
    clock.now += 31
    asyncio.run(controller.tick(_isvc(kube, namespace)))
    body = _isvc(kube, namespace)
    rolled_back = _conditions(body)["RolledBack"]
    assert rolled_back[0] == "True" and "error rate 0.300 > 0.05" in rolled_back[1]
    assert body["status"]["turnout"]["phase"] == "rolled-back"
    assert _routes(kube, namespace) == [("stable", 100)]
    assert kube.get("apps/v1", "Deployment", namespace, "iris-00002-predictor") is None


def test_canary_percent_splits_and_unreadable_metrics_change_nothing(kube: Kube) -> None:
    namespace = new_namespace(kube)
    feed, clock = Feed(), Clock()
    controller = _controller(kube, feed, clock)
    body = kube.create({**isvc_body("iris", "s3://models/iris-v1"),
                        "metadata": {"name": "iris", "namespace": namespace}})
    asyncio.run(controller.applied(body))
    set_ready(kube, namespace, "iris-00001-predictor")
    body = _update(kube, namespace, {"predictor": {"canaryTrafficPercent": 20, "model": {
        "modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/iris-v2"}}})
    asyncio.run(controller.applied(body))
    set_ready(kube, namespace, "iris-00002-predictor")
    feed.broken = True
    clock.now += 100
    asyncio.run(controller.tick(_isvc(kube, namespace)))
    assert _routes(kube, namespace) == [("stable", 80), ("canary", 20)]
    body = _isvc(kube, namespace)
    traffic = body["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == \
        [("iris-00001", 80), ("iris-00002", 20)]
    assert _conditions(body)["CanaryReady"][0] == "True"


def test_invalid_spec_is_a_condition_not_a_crash(kube: Kube) -> None:
    namespace = new_namespace(kube)
    controller = _controller(kube, Feed(), Clock())
    body = isvc_body("bad", "s3://models/x")
    body["spec"]["predictor"]["model"]["modelFormat"]["name"] = "triton"
    body = kube.create({**body, "metadata": {"name": "bad", "namespace": namespace}})
    asyncio.run(controller.applied(body))
    ready = _conditions(_isvc(kube, namespace, "bad"))["Ready"]
    assert ready[0] == "False" and "triton" in ready[1]
    assert kube.list("apps/v1", "Deployment", namespace) == []


def test_kopf_operator_creates_objects_and_deletion_collects_them(kube: Kube, kube_api) -> None:
    import kopf

    namespace = new_namespace(kube)
    os.environ["KUBECONFIG"] = str(kube_api.kubeconfig)
    controller = _controller(kube, Feed(), Clock())
    registry = register(controller, tick_seconds=1)
    stop, ready = threading.Event(), threading.Event()
    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=registry, settings=settings, standalone=True, namespaces=[namespace],
        stop_flag=stop, ready_flag=ready)), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        kube.create({**isvc_body("iris", "s3://models/iris", predictor={
            "minReplicas": 1, "maxReplicas": 3, "scaleMetric": "rps"}),
            "metadata": {"name": "iris", "namespace": namespace}})
        wait_for(lambda: kube.get("v1", "ConfigMap", namespace, "turnout-router-routes"))
        deployment = kube.get("apps/v1", "Deployment", namespace, "iris-00001-predictor")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][:2] == \
            ["serve", "s3://models/iris"]
        assert kube.get("keda.sh/v1alpha1", "ScaledObject", namespace, "iris-00001-predictor")
        set_ready(kube, namespace, "iris-00001-predictor")
        wait_for(lambda: _conditions(_isvc(kube, namespace)).get("Ready", ("",))[0] == "True")
        kube.call("DELETE", kube.path(API_VERSION, "InferenceService", namespace, "iris"))
        ours = "app.kubernetes.io/managed-by=turnout-controller"
        wait_for(lambda: not any(
            kube.list(v, k, namespace, ours) for v, k in [
                ("apps/v1", "Deployment"), ("v1", "ConfigMap"), ("v1", "Service"),
                ("keda.sh/v1alpha1", "ScaledObject")]), timeout=60)
    except AssertionError:
        left = {k: [(o["metadata"]["name"], o["metadata"].get("ownerReferences"),
                     o["metadata"].get("finalizers")) for o in kube.list(v, k, namespace)]
                for v, k in [("apps/v1", "Deployment"), ("v1", "ConfigMap"), ("v1", "Service"),
                             ("keda.sh/v1alpha1", "ScaledObject"),
                             (API_VERSION, "InferenceService")]}
        raise AssertionError(f"left behind: {left}") from None
    finally:
        stop.set()
        thread.join(30)
