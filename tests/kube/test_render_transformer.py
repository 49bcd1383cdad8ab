"""The transformer objects the controller writes per revision, as exact specs (no API server)."""

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
TURNOUT = ("{turnout: {modelClass: 'transformer:CsvToIris', storageUri: 's3://code/tr', "
           "protocol: grpc-v2}, timeout: 7, nodeSelector: {pool: cpu}}")
CONTAINERS = ("{containers: [{name: kserve-container, image: 'me/tr:1', "
              "args: ['--model_name', 'iris-custom', '--predictor_host=old:80', '--protocol', 'v1']}]}")
LABELS = {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/instance": "iris",
          "app.kubernetes.io/component": "transformer",
          "app.kubernetes.io/managed-by": "turnout-controller",
          "serving.turnout.dev/service": "iris",
          "serving.turnout.dev/revision": "iris-00001-transformer"}


def isvc(transformer: str | None, percent: str = ""):
    extra = f"\n  transformer: {transformer}" if transformer else ""
    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris}}
spec:
  predictor:{percent}
    model: {{modelFormat: {{name: sklearn}}, storageUri: "s3://models/iris"}}{extra}
""")]).services[0]


def desired(service, state=None):
    state = state or apply_manifest(None, service, now=0)
    ready = {r: render.endpoints(r, SETTINGS) for r in state.serving().values()}
    return plan(services=[(service, state)], graphs=[], observed=Observed(endpoints=ready))


def test_turnout_form_deployment_exact() -> None:
    service = isvc(TURNOUT)
    (workload,) = desired(service).transformers.values()
    got = render.transformer_deployment(workload, service, OWNER, SETTINGS)
    probe = "/v2/models/iris/ready"
    assert got == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "iris-00001-transformer", "namespace": NS, "labels": LABELS,
                     "ownerReferences": [REF]},
        "spec": {"replicas": 1,
                 "selector": {"matchLabels": {"serving.turnout.dev/revision":
                                              "iris-00001-transformer"}},
                 "template": {"metadata": {"labels": LABELS}, "spec": {
                     "containers": [{
                         "name": "kserve-container", "image": "turnout:test",
                         "command": ["turnout"],
                         "args": ["serve", "s3://code/tr", "--name", "iris",
                                  "--model-class", "transformer:CsvToIris",
                                  "--transformer-for", "iris-00001-predictor.ml.svc:8081",
                                  "--predictor-protocol", "grpc-v2", "--predictor-model", "iris",
                                  "--inference-threads", "16",
                                  "--host", "0.0.0.0", "--http-port", "8080",
                                  "--grpc-port", "8081", "--drain-seconds", "20",
                                  "--predictor-timeout", "7", "--insecure"],
                         "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                   {"name": "grpc", "containerPort": 8081, "protocol": "TCP"}],
                         "readinessProbe": {"httpGet": {"path": probe, "port": "http"},
                                            "periodSeconds": 2, "failureThreshold": 2},
                         "livenessProbe": {"httpGet": {"path": "/v2/health/live",
                                                       "port": "http"},
                                           "periodSeconds": 10, "failureThreshold": 3}}],
                     "terminationGracePeriodSeconds": 30,
                     "nodeSelector": {"pool": "cpu"}}}},
    }


def test_service_exact_and_the_router_reaches_the_transformer() -> None:
    service = isvc(TURNOUT)
    plan_ = desired(service)
    (workload,) = plan_.transformers.values()
    assert render.transformer_service(workload, OWNER, SETTINGS) == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "iris-00001-transformer", "namespace": NS, "labels": LABELS,
                     "ownerReferences": [REF]},
        "spec": {"type": "ClusterIP",
                 "selector": {"serving.turnout.dev/revision": "iris-00001-transformer"},
                 "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
                           {"name": "grpc", "port": 8081, "targetPort": "grpc",
                            "protocol": "TCP"}]}}
    # the observer lists the transformer's Service once its Deployment is ready
    state = apply_manifest(None, service, now=0)
    ready = {"iris-00001": render.endpoints("iris-00001", SETTINGS),
             "iris-00001-transformer": render.transformer_endpoints(workload, SETTINGS)}
    routed = plan(services=[(service, state)], graphs=[], observed=Observed(endpoints=ready))
    variant = routed.routes.services[0].variants[0]
    assert (variant.http, variant.grpc) == (["http://iris-00001-transformer.ml.svc:8080"],
                                            ["iris-00001-transformer.ml.svc:8081"])
    assert render.endpoints("iris-00001-transformer", SETTINGS,
                            host="iris-00001-transformer.ml.svc") == \
        render.transformer_endpoints(workload, SETTINGS)


@pytest.mark.parametrize("args, want", [
    (["--model_name", "iris-custom", "--predictor_host=old:80", "--protocol", "v1"],
     ["--model_name", "iris-custom", "--predictor_host=iris-00001-predictor.ml.svc:8080",
      "--protocol", "v1"]),
    (["--protocol", "grpc-v2"],   # KServe fills predictor_host and model_name
     ["--protocol", "grpc-v2", "--predictor_host", "iris-00001-predictor.ml.svc:8081",
      "--model_name", "iris"]),
    (["--predictor_host", "x", "--model_name=m"],
     ["--predictor_host", "iris-00001-predictor.ml.svc:8080", "--model_name=m"]),
])
def test_kserve_containers_run_as_written_with_the_predictor_filled_in(
        args: list[str], want: list[str]) -> None:
    service = isvc("{containers: [{image: 'me/tr:1', env: [{name: A, value: b}], args: "
                   f"{args!r}}}]}}")
    (workload,) = desired(service).transformers.values()
    container = render.transformer_deployment(workload, service, OWNER, SETTINGS)[
        "spec"]["template"]["spec"]["containers"][0]
    assert container == {"name": "kserve-container", "image": "me/tr:1",
                         "env": [{"name": "A", "value": "b"}], "args": want,
                         "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                   {"name": "grpc", "containerPort": 8081, "protocol": "TCP"}]}


def test_render_everything_with_a_canary_and_the_network_policies() -> None:
    first = isvc(CONTAINERS)
    state = apply_manifest(None, first, now=0)
    second = isvc(TURNOUT, percent="\n    canaryTrafficPercent: 20")
    state = apply_manifest(state, second, now=1)
    ready = {r: render.endpoints(r, SETTINGS) for r in ("iris-00001", "iris-00002")}
    got = render.render(plan(services=[(second, state)], graphs=[],
                             observed=Observed(endpoints=ready)),
                        {"iris": (second, OWNER)}, SETTINGS)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in got]
    assert kinds == [
        ("Deployment", "iris-00001-predictor"), ("Service", "iris-00001-predictor"),
        ("Deployment", "iris-00002-predictor"), ("Service", "iris-00002-predictor"),
        ("Deployment", "iris-00001-transformer"), ("Service", "iris-00001-transformer"),
        ("Deployment", "iris-00002-transformer"), ("Service", "iris-00002-transformer"),
        ("ConfigMap", "turnout-router-routes"), ("Deployment", "turnout-router"),
        ("Service", "turnout-router"), ("NetworkPolicy", "turnout-router-predictors"),
        ("NetworkPolicy", "turnout-router-transformers"),
        ("NetworkPolicy", "turnout-router-predictors-from-transformers")]
    # each revision keeps its own transformer: the stable one KServe's image, the canary ours
    images = [o["spec"]["template"]["spec"]["containers"][0]["image"] for o in got[4:8:2]]
    assert images == ["me/tr:1", "turnout:test"]
    # transformers not ready yet: the router holds rather than skipping them
    routes = yaml.safe_load(got[8]["data"]["routes.yaml"])
    assert [(v["name"], v["weight"], v["http"]) for v in routes["services"][0]["variants"]] == [
        ("stable", 80, []), ("canary", 20, [])]
    transformers, from_transformers = got[12]["spec"], got[13]["spec"]
    assert transformers["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == \
        "transformer"
    assert transformers["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "turnout-router", "app.kubernetes.io/component": "router"}}}]
    assert from_transformers["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == \
        "predictor"
    assert from_transformers["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/managed-by": "turnout-controller",
        "app.kubernetes.io/component": "transformer"}}}]


def test_no_transformer_no_transformer_objects() -> None:
    service = isvc(None)
    got = render.render(desired(service), {"iris": (service, OWNER)}, SETTINGS)
    assert not [o for o in got if "transformer" in o["metadata"]["name"]]


def test_the_status_names_each_serving_revisions_transformer() -> None:
    from serving.control.kube import resources

    state = apply_manifest(None, isvc(CONTAINERS), now=0)
    state = apply_manifest(state, isvc(TURNOUT, percent="\n    canaryTrafficPercent: 20"), now=1)
    status = resources.service_status({"metadata": {"name": "iris", "generation": 1}}, state,
                                      ready={"iris-00001"}, settings=SETTINGS, omitted=[])
    assert status["components"]["transformer"] == {
        "latestCreatedRevision": "iris-00002",
        "deployments": {"iris-00001": "iris-00001-transformer",
                        "iris-00002": "iris-00002-transformer"}}
    plain = isvc(None)
    status = resources.service_status({"metadata": {"name": "iris", "generation": 1}},
                                      apply_manifest(None, plain, now=0), ready=set(),
                                      settings=SETTINGS, omitted=[])
    assert set(status["components"]) == {"predictor"}


def test_with_replica_mtls_the_transformer_serves_and_calls_its_predictor_over_tls() -> None:
    from dataclasses import replace

    from serving.control.kube.secure import TlsSettings

    settings = replace(SETTINGS, server_tls=TlsSettings("replica-tls", verify_clients=True))
    service = isvc(TURNOUT)
    (workload,) = desired(service).transformers.values()
    pod = render.transformer_deployment(workload, service, OWNER, settings)["spec"][
        "template"]["spec"]
    args = pod["containers"][0]["args"]
    tail = args[args.index("--insecure") + 1:]
    assert tail == ["--tls-cert", "/var/run/turnout/tls/tls.crt",
                    "--tls-key", "/var/run/turnout/tls/tls.key",
                    "--tls-client-ca", "/var/run/turnout/tls/ca.crt",
                    "--predictor-ca", "/var/run/turnout/upstream-tls/ca.crt",
                    "--predictor-cert", "/var/run/turnout/upstream-tls/tls.crt",
                    "--predictor-key", "/var/run/turnout/upstream-tls/tls.key"]
    assert {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {
        "tls": "/var/run/turnout/tls", "upstream-tls": "/var/run/turnout/upstream-tls"}
    assert {v["name"]: v["secret"]["secretName"] for v in pod["volumes"]} == {
        "tls": "replica-tls", "upstream-tls": "replica-tls"}
    # and the router reaches the transformer over TLS, as it does replicas
    assert render.transformer_endpoints(workload, settings).http == [
        "https://iris-00001-transformer.ml.svc:8080"]
