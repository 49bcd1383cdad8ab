"""The chart installs on a real API server (1.20), its CRDs then refuse invalid resources at
admission naming the field, and the converted KServe examples apply."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from serving.spec.convert import convert_texts

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "serving.turnout.dev", "v1alpha1"


def _helm_bin() -> Path:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "k8s" / "tools.sh")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1]) / "helm"


@pytest.fixture(scope="module")
def installed(kube_api):
    helm = _helm_bin()
    done = subprocess.run([str(helm), "install", "turnout", str(ROOT / "charts" / "turnout"),
                           "--namespace", "turnout-system", "--create-namespace",
                           "--kubeconfig", str(kube_api.kubeconfig), "--wait=false"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import kubernetes

    api = kube_api.client()
    ext = kubernetes.client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crds = {c.metadata.name: c for c in ext.list_custom_resource_definition().items}
        established = [n for n, c in crds.items() if n.endswith(GROUP) and any(
            cond.type == "Established" and cond.status == "True"
            for cond in c.status.conditions or [])]
        if len(established) == 2:
            break
        time.sleep(0.2)
    return api, sorted(established)


def test_helm_install_creates_the_crds_and_the_controller(installed) -> None:
    import kubernetes

    api, established = installed
    assert established == [f"inferencegraphs.{GROUP}", f"inferenceservices.{GROUP}"]
    apps = kubernetes.client.AppsV1Api(api)
    deployments = [d.metadata.name for d in
                   apps.list_namespaced_deployment("turnout-system").items]
    assert any("controller" in name for name in deployments), deployments
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    roles = [r.metadata.name for r in rbac.list_cluster_role().items]
    assert any(name.startswith("turnout") for name in roles)


def _isvc(spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": "bad"}, "spec": spec}


@pytest.mark.parametrize("spec, field", [
    ({"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
     "spec.predictor.model.storageUri"),
    ({"predictor": {"canaryTrafficPercent": 150, "model": {
        "modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/iris"}}},
     "spec.predictor.canaryTrafficPercent"),
    ({"predictor": {"scaleMetric": "gpu", "model": {
        "modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/iris"}}},
     "spec.predictor.scaleMetric"),
])
def test_invalid_inferenceservices_are_refused_at_admission_naming_the_field(
        installed, spec, field) -> None:
    import kubernetes

    api, _ = installed
    objects = kubernetes.client.CustomObjectsApi(api)
    with pytest.raises(kubernetes.client.ApiException) as refused:
        objects.create_namespaced_custom_object(GROUP, VERSION, "default", "inferenceservices",
                                                _isvc(spec))
    assert refused.value.status == 422
    assert field in refused.value.body, refused.value.body


def test_the_kserve_examples_convert_and_apply(installed) -> None:
    import kubernetes

    api, _ = installed
    objects = kubernetes.client.CustomObjectsApi(api)
    kubernetes.client.CoreV1Api(api).create_namespace({"metadata": {"name": "examples"}})
    example = ROOT / "examples" / "inferenceservice.yaml"
    docs = convert_texts([(example, example.read_text())]).documents
    applied = {}
    for doc in docs:  # a file may name a service twice (a canary): the last one stands
        plural = "inferenceservices" if doc["kind"] == "InferenceService" else "inferencegraphs"
        name = doc["metadata"]["name"]
        if name in applied:
            current = objects.get_namespaced_custom_object(GROUP, VERSION, "examples", plural, name)
            doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            objects.replace_namespaced_custom_object(GROUP, VERSION, "examples", plural, name, doc)
        else:
            objects.create_namespaced_custom_object(GROUP, VERSION, "examples", plural, doc)
        applied[name] = doc
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, "examples", "inferenceservices",
                                                  "iris")
    assert stored["spec"] == applied["iris"]["spec"]  # nothing pruned: a lossless conversion
