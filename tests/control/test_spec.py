"""Manifests: KServe's shapes load unchanged; unknown fields warn; invalid ones name their path."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.spec import ManifestError, load_texts

KSERVE_NEW = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: sklearn-iris
  annotations: {serving.kserve.io/deploymentMode: Serverless}
spec:
  predictor:
    minReplicas: 0
    maxReplicas: 4
    scaleTarget: 5
    scaleMetric: concurrency
    containerConcurrency: 10
    timeout: 60
    canaryTrafficPercent: 10
    batcher: {maxBatchSize: 32, maxLatency: 500, timeout: 60}
    logger: {mode: all, url: http://message-dumper.default/}
    serviceAccountName: sa
    model:
      modelFormat: {name: sklearn, version: "1"}
      runtime: kserve-sklearnserver
      protocolVersion: v2
      storageUri: gs://kfserving-examples/models/sklearn/1.0/model
      resources: {requests: {cpu: 100m, memory: 256Mi}}
"""


def one(text: str):
    manifests = load_texts([(Path("m.yaml"), text)])
    return manifests, manifests.services[0] if manifests.services else None


def test_kserve_predictor_model_form_loads_with_every_field() -> None:
    manifests, isvc = one(KSERVE_NEW)
    p = isvc.spec.predictor
    assert (p.minReplicas, p.maxReplicas, p.scaleTarget, p.scaleMetric) == (0, 4, 5, "concurrency")
    assert (p.canaryTrafficPercent, p.containerConcurrency, p.timeout) == (10, 10, 60)
    assert p.batcher.maxBatchSize == 32 and p.logger.mode == "all"
    model = p.resolved()
    assert (model.modelFormat.name, model.runtime, model.protocolVersion) == \
        ("sklearn", "kserve-sklearnserver", "v2")
    assert not [w for w in manifests.warnings if "unknown field" in w]


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "onnx", "pytorch", "tensorflow",
                                       "lightgbm"])
def test_older_framework_form_becomes_a_model_format(framework: str) -> None:
    _, isvc = one(f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: old}}
spec:
  predictor:
    {framework}: {{storageUri: "file://m", protocolVersion: v1}}
""")
    model = isvc.spec.predictor.resolved()
    assert (model.modelFormat.name, model.storageUri, model.protocolVersion) == \
        (framework, "file://m", "v1")


def test_unknown_fields_warn_with_their_path() -> None:
    manifests, _ = one(KSERVE_NEW.replace("scaleTarget: 5", "scaleTarget: 5\n    minReplica: 1")
                       .replace("protocolVersion: v2", "protocolVersion: v2\n      storageUrl: x"))
    unknown = [w for w in manifests.warnings if "unknown field" in w]
    assert any("spec.predictor.minReplica " in w for w in unknown)
    assert any("spec.predictor.model.storageUrl " in w for w in unknown)


@pytest.mark.parametrize("change, path", [
    (("minReplicas: 0", "minReplicas: -1"), "spec.predictor.minReplicas"),
    (("canaryTrafficPercent: 10", "canaryTrafficPercent: 101"), "spec.predictor.canaryTrafficPercent"),
    (("scaleMetric: concurrency", "scaleMetric: gpu"), "spec.predictor.scaleMetric"),
    (("protocolVersion: v2", "protocolVersion: v3"), "spec.predictor.model.protocolVersion"),
    (("name: sklearn-iris", "name: Sklearn_Iris"), "metadata.name"),
    (("maxBatchSize: 32", "maxBatchSize: 0"), "spec.predictor.batcher.maxBatchSize"),
    (("modelFormat: {name: sklearn, version: \"1\"}", "modelFormat: {version: \"1\"}"),
     "spec.predictor.model.modelFormat.name"),
    (("timeout: 60\n", "timeout: soon\n"), "spec.predictor.timeout"),
])
def test_invalid_fields_are_errors_naming_the_path(change: tuple[str, str], path: str) -> None:
    with pytest.raises(ManifestError) as info:
        one(KSERVE_NEW.replace(*change, 1))
    assert "m.yaml[0] (InferenceService " in str(info.value) and f"{path}:" in str(info.value)


def test_several_documents_every_error_reported_and_order_kept() -> None:
    graph = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: chain}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - {stepName: first, serviceName: sklearn-iris}
        - {stepName: second, serviceName: sklearn-iris, data: $response}
"""
    manifests = load_texts([(Path("a.yaml"), KSERVE_NEW + "---" + graph + "---\n" + KSERVE_NEW)])
    assert [s.name for s in manifests.services] == ["sklearn-iris", "sklearn-iris"]
    assert manifests.graphs[0].spec.nodes["root"].steps[1].data == "$response"
    bad = KSERVE_NEW.replace("minReplicas: 0", "minReplicas: x") + "---\nkind: Pod\n"
    with pytest.raises(ManifestError) as info:
        load_texts([(Path("b.yaml"), bad)])
    assert "b.yaml[0]" in str(info.value) and "b.yaml[1]" in str(info.value)


@pytest.mark.parametrize("block, error", [
    ("turnout: {rollout: {steps: [50, 10]}}", "spec.turnout.rollout"),
    ("turnout: {rules: [{header: {x: b}, variant: blue}]}", "spec.turnout.rules[0].variant"),
    ("turnout: {rollout: {interval: soon}}", "spec.turnout.rollout.interval"),
    ("turnout: {mirror: {percent: 120}}", "spec.turnout.mirror.percent"),
])
def test_turnout_block_errors_name_the_path(block: str, error: str) -> None:
    with pytest.raises(ManifestError, match=error.replace("[", r"\[").replace("]", r"\]")):
        one(KSERVE_NEW + "  " + block + "\n")


def test_turnout_block_from_the_annotation() -> None:
    text = KSERVE_NEW.replace(
        "annotations: {serving.kserve.io/deploymentMode: Serverless}",
        "annotations: {serving.turnout.dev/spec: 'rollout: {steps: [20, 100], interval: 5s}'}")
    _, isvc = one(text)
    assert isvc.spec.turnout.rollout.steps == [20, 100]
    assert isvc.spec.turnout.rollout.interval == 5.0


EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "shadow-rollout.yaml",
                                  "registry-canary.yaml"])
def test_example_manifests_load_without_warnings(name: str) -> None:
    from serving.spec.load import load_files

    manifests = load_files([EXAMPLES / name])
    assert manifests.services and manifests.warnings == []


def test_shadow_example_mirrors_to_the_canary_and_the_router_holds_the_cold_service() -> None:
    from serving.control.policy.revisions import apply_manifest
    from serving.control.policy.routes import Endpoints, router_config
    from serving.spec.load import load_files

    manifests = load_files([EXAMPLES / "shadow-rollout.yaml"])
    states: dict = {}
    for isvc in manifests.services:
        states[isvc.name] = apply_manifest(states.get(isvc.name), isvc, now=1)
    iris, cold = states["iris"], states["iris-cold"]
    assert (iris.phase, iris.percent) == ("progressing", 10)
    latest = {s.name: s for s in manifests.services}
    ready = {iris.stable: Endpoints(["http://127.0.0.1:1"], ["127.0.0.1:2"]),
             iris.canary: Endpoints(["http://127.0.0.1:3"], ["127.0.0.1:4"])}
    plan = router_config(services=[(latest[n], s) for n, s in states.items()], endpoints=ready,
                         graphs=[], at_zero=frozenset({cold.stable}))
    routes = {s.name: s for s in plan.config.services}
    assert [(m.variant, m.percent) for m in routes["iris"].mirror] == [("canary", 100)]
    assert [(r.header, r.variant) for r in routes["iris"].rules] == [({"x-pin": "stable"}, "stable")]
    (zero,) = routes["iris-cold"].variants
    assert (zero.model, zero.http, zero.grpc) == ("iris-cold", [], [])
    assert routes["iris-cold"].upstream.hold_seconds > 0
