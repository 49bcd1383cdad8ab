"""The objects the controller writes, as exact specs (no API server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.control.kube import render
from serving.control.kube.render import Owner, Settings
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import apply_manifest
from serving.spec import load_texts

NS = "ml"
SETTINGS = Settings(namespace=NS, image="turnout:test", drain_seconds=20)
OWNER = Owner(name="iris", uid="uid-1")
REF = {"apiVersion": "serving.turnout.dev/v1alpha1", "kind": "InferenceService", "name": "iris",
       "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}


def isvc(predictor: str = "", *, model: str = "", name: str = "iris"):
    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}}}
spec:
  predictor:
    model: {{modelFormat: {{name: sklearn}}, storageUri: "s3://models/iris"{model}}}
{predictor}
""")]).services[0]


def desired(service, ready: bool = True):
    state = apply_manifest(None, service, now=0)
    revisions = [state.stable]
    endpoints = {r: render.endpoints(r, SETTINGS) for r in revisions} if ready else {}
    return plan(services=[(service, state)], graphs=[], observed=Observed(endpoints=endpoints))


def workload(service):
    return next(iter(desired(service).workloads.values()))


LABELS = {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/instance": "iris",
          "app.kubernetes.io/component": "predictor",
          "app.kubernetes.io/managed-by": "turnout-controller",
          "serving.turnout.dev/service": "iris", "serving.turnout.dev/revision": "iris-00001"}


def test_predictor_deployment_exact() -> None:
    service = isvc("    batcher: {maxBatchSize: 16, maxLatency: 5}",
                   model=", resources: {limits: {cpu: '1', memory: 1Gi}}")
    got = render.predictor_deployment(workload(service), service, OWNER, SETTINGS)
    assert got == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "iris-00001-predictor", "namespace": NS,
                     "labels": {**LABELS, "serving.turnout.dev/role": "stable"},
                     "ownerReferences": [REF]},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"serving.turnout.dev/revision": "iris-00001"}},
            "template": {"metadata": {"labels": LABELS}, "spec": {
                "containers": [{
                    "name": "kserve-container", "image": "turnout:test", "command": ["turnout"],
                    "args": ["serve", "s3://models/iris", "--name", "iris", "--runtime",
                             "sklearn", "--host", "0.0.0.0", "--http-port", "8080",
                             "--grpc-port", "8081", "--drain-seconds", "20",
                             "--max-batch-size", "16", "--max-batch-latency-ms", "5",
                             "--insecure"],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                              {"name": "grpc", "containerPort": 8081, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/v2/models/iris/ready",
                                                   "port": "http"},
                                       "periodSeconds": 2, "failureThreshold": 2},
                    "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                                      "periodSeconds": 10, "failureThreshold": 3},
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
                "terminationGracePeriodSeconds": 30}}}}


def test_pod_fields_pass_through_and_no_batcher_flags() -> None:
    service = isvc("    serviceAccountName: reader\n    nodeSelector: {gpu: 'no'}")
    got = render.predictor_deployment(workload(service), service, OWNER, SETTINGS)
    pod = got["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "reader" and pod["nodeSelector"] == {"gpu": "no"}
    assert "--max-batch-size" not in pod["containers"][0]["args"]
    assert "resources" not in pod["containers"][0]


def test_predictor_service_exact() -> None:
    service = isvc()
    assert render.predictor_service(workload(service), OWNER, SETTINGS) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "iris-00001-predictor", "namespace": NS,
                     "labels": {**LABELS, "serving.turnout.dev/role": "stable"},
                     "ownerReferences": [REF]},
        "spec": {"type": "ClusterIP", "selector": {"serving.turnout.dev/revision": "iris-00001"},
                 "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                           {"name": "grpc", "port": 8081, "targetPort": "grpc",
                            "protocol": "TCP"}]}}


SEL = 'service="iris",variant="stable"'
HELD = f"sum(turnout_router_held_requests{{{SEL}}})"


@pytest.mark.parametrize(("predictor", "hpa_api", "expected"), [
    ("", "autoscaling/v2", None),                                     # 1..1: fixed
    ("    minReplicas: 2\n    maxReplicas: 2", "autoscaling/v2", None),
    ("    minReplicas: 1\n    maxReplicas: 4\n    scaleMetric: cpu\n    scaleTarget: 60",
     "autoscaling/v2beta2",
     {"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
      "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                  "name": "iris-00001-predictor"},
               "minReplicas": 1, "maxReplicas": 4,
               "metrics": [{"type": "Resource", "resource": {
                   "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]}}),
    ("    minReplicas: 2\n    maxReplicas: 3\n    scaleMetric: memory", "autoscaling/v2",
     {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
      "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                  "name": "iris-00001-predictor"},
               "minReplicas": 2, "maxReplicas": 3,
               "metrics": [{"type": "Resource", "resource": {
                   "name": "memory", "target": {"type": "Utilization",
                                                "averageUtilization": 80}}}]}}),
    ("    minReplicas: 0\n    maxReplicas: 5\n    scaleTarget: 4", "autoscaling/v2",
     {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
      "spec": {"scaleTargetRef": {"name": "iris-00001-predictor"},
               "minReplicaCount": 0, "maxReplicaCount": 5, "pollingInterval": 15,
               "cooldownPeriod": 30,
               "triggers": [{"type": "prometheus", "metadata": {
                   "serverAddress": "http://prometheus.monitoring.svc:9090",
                   "query": f"(sum(rate(turnout_router_request_duration_seconds_sum{{{SEL}}}"
                            f"[1m])) or vector(0)) + ({HELD} or vector(0))",
                   "threshold": "4", "activationThreshold": "0"}}]}}),
    ("    minReplicas: 1\n    maxReplicas: 3\n    scaleMetric: rps", "autoscaling/v2",
     {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
      "spec": {"scaleTargetRef": {"name": "iris-00001-predictor"},
               "minReplicaCount": 1, "maxReplicaCount": 3, "pollingInterval": 15,
               "cooldownPeriod": 30,
               "triggers": [{"type": "prometheus", "metadata": {
                   "serverAddress": "http://prometheus.monitoring.svc:9090",
                   "query": f"(sum(rate(turnout_router_requests_total{{{SEL}}}[1m])) "
                            f"or vector(0)) + ({HELD} or vector(0))",
                   "threshold": "200", "activationThreshold": "0"}}]}}),
    ("    minReplicas: 0\n    maxReplicas: 2\n    scaleMetric: cpu", "autoscaling/v2",
     {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
      "spec": {"scaleTargetRef": {"name": "iris-00001-predictor"},
               "minReplicaCount": 0, "maxReplicaCount": 2, "pollingInterval": 15,
               "cooldownPeriod": 30,
               "triggers": [{"type": "cpu", "metricType": "Utilization",
                             "metadata": {"value": "80"}},
                            {"type": "prometheus", "metadata": {
                                "serverAddress": "http://prometheus.monitoring.svc:9090",
                                "query": f"{HELD} or vector(0)", "threshold": "1",
                                "activationThreshold": "0"}}]}}),
])
def test_autoscaler(predictor: str, hpa_api: str, expected: dict | None) -> None:
    service = isvc(predictor)
    settings = Settings(namespace=NS, hpa_api_version=hpa_api)
    got = render.autoscaler(workload(service), service, OWNER, settings)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert got["metadata"]["name"] == "iris-00001-predictor"
    assert got["metadata"]["ownerReferences"] == [REF]
    assert {k: v for k, v in got.items() if k != "metadata"} == expected


def test_router_objects_exact() -> None:
    service = isvc()
    other = Owner(name="abc", uid="uid-0")
    routes = desired(service).routes
    shared = [{**other.reference(controller=False)},
              {**REF, "controller": False}]
    cm = render.router_configmap(routes, [OWNER, other], SETTINGS)
    assert cm["metadata"] == {"name": "turnout-router-routes", "namespace": NS,
                              "labels": render.router_labels(SETTINGS), "ownerReferences": shared}
    doc = yaml.safe_load(cm["data"]["routes.yaml"])
    assert doc["services"][0]["variants"][0]["http"] == \
        ["http://iris-00001-predictor.ml.svc:8080"]
    assert doc["services"][0]["variants"][0]["grpc"] == ["iris-00001-predictor.ml.svc:8081"]
    deployment = render.router_deployment([OWNER, other], SETTINGS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["router", "--config", "/etc/turnout/routes.yaml", "--host",
                                 "0.0.0.0", "--http-port", "8080", "--grpc-port", "8081",
                                 "--admin-host", "127.0.0.1", "--admin-port", "8090",
                                 "--drain-seconds", "20", "--insecure"]
    assert container["volumeMounts"] == [{"name": "routes", "mountPath": "/etc/turnout",
                                          "readOnly": True}]
    assert deployment["spec"]["template"]["spec"]["volumes"] == [
        {"name": "routes", "configMap": {"name": "turnout-router-routes"}}]
    assert deployment["metadata"]["ownerReferences"] == shared
    svc = render.router_service([OWNER], SETTINGS)
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP"}]
    assert 8090 not in [p["port"] for p in svc["spec"]["ports"]]  # admin stays on loopback


def test_render_everything_and_canary_split() -> None:
    first = isvc()
    state = apply_manifest(None, first, now=0)
    second = load_texts([(Path("m.yaml"), """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    canaryTrafficPercent: 20
    model: {modelFormat: {name: sklearn}, storageUri: "s3://models/iris-v2"}
""")]).services[0]
    state = apply_manifest(state, second, now=1)
    ready = {r: render.endpoints(r, SETTINGS) for r in ("iris-00001", "iris-00002")}
    got = render.render(plan(services=[(second, state)], graphs=[],
                             observed=Observed(endpoints=ready)),
                        {"iris": (second, OWNER)}, SETTINGS)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in got]
    assert kinds == [("Deployment", "iris-00001-predictor"), ("Service", "iris-00001-predictor"),
                     ("Deployment", "iris-00002-predictor"), ("Service", "iris-00002-predictor"),
                     ("ConfigMap", "turnout-router-routes"), ("Deployment", "turnout-router"),
                     ("Service", "turnout-router"), ("NetworkPolicy", "turnout-router-predictors")]
    routes = yaml.safe_load(got[4]["data"]["routes.yaml"])
    assert [(v["name"], v["weight"], v["http"]) for v in routes["services"][0]["variants"]] == [
        ("stable", 80, ["http://iris-00001-predictor.ml.svc:8080"]),
        ("canary", 20, ["http://iris-00002-predictor.ml.svc:8080"])]
    assert got[2]["metadata"]["labels"]["serving.turnout.dev/role"] == "canary"
    assert "s3://models/iris-v2" in got[2]["spec"]["template"]["spec"]["containers"][0]["args"]
