"""What the controller's tests share: the CRDs they install, namespaces, simulated readiness.

The InferenceService and InferenceGraph CRDs are the generated ones in charts/turnout/crds/,
applied server-side as Helm applies them (field manager ``helm``), so a later ``helm install``
on the same session's API server finds them its own. KEDA's ScaledObject gets a minimal
stand-in (spec and status preserved as given), so its objects can be written and read.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from serving.control.kube.actuator import Kube


def _crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                               "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "properties": {"spec": open_object,
                                                      "status": open_object}}}}]}}


CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "turnout" / "crds"
KEDA = _crd("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")


def install_crds(kube: Kube) -> None:
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CHART_CRDS.glob("*.yaml"))]
    for crd in crds:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
        kube.api.call_api(path, "PATCH", query_params=[("fieldManager", "helm"), ("force", "true")],
                          body=crd, header_params={"Content-Type": "application/apply-patch+yaml",
                                                   "Accept": "application/json"},
                          auth_settings=["BearerToken"], response_type="object")
    try:
        kube.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", KEDA)
    except ApiException as exc:
        if exc.status != 409:
            raise
    crds.append(KEDA)
    deadline = time.monotonic() + 30
    for crd in crds:
        group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
        plural = crd["spec"]["names"]["plural"]
        while True:
            try:
                kube.call("GET", f"/apis/{group}/{version}/{plural}")
                break
            except ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def new_namespace(kube: Kube) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.call("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def set_ready(kube: Kube, namespace: str, deployment: str, ready: int = 1) -> None:
    """What a kubelet would report: ``ready`` of the Deployment's pods are ready.

    The controller-manager's deployment controller recomputes a Deployment's status from its
    ReplicaSets (a patched ``readyReplicas`` is overwritten within a second), so readiness is
    set where a kubelet sets it, on the pods' status, and waited for on the Deployment."""
    selector = kube.get("apps/v1", "Deployment", namespace, deployment)["spec"]["selector"]
    query = ",".join(f"{k}={v}" for k, v in selector["matchLabels"].items())
    pods = wait_for(lambda: [p for p in kube.list("v1", "Pod", namespace, query)
                             if not p["metadata"].get("deletionTimestamp")][:ready] or None
                    if ready else [], timeout=30)
    for pod in pods or []:
        kube.patch("v1", "Pod", namespace, pod["metadata"]["name"], {"status": {
            "phase": "Running", "podIP": "10.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "ContainersReady", "status": "True"}]}}, sub="status")
    wait_for(lambda: int((kube.get("apps/v1", "Deployment", namespace, deployment).get("status")
                          or {}).get("readyReplicas") or 0) >= ready, timeout=30)


def isvc_body(name: str, uri: str, *, predictor: dict[str, Any] | None = None,
              annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "serving.turnout.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                             "storageUri": uri}, **(predictor or {})}}}


def wait_for(check, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(interval)
