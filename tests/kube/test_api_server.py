"""The API server the Kubernetes tests stand on answers, and its garbage collector runs."""

from __future__ import annotations

import time


def test_api_server_serves_and_collects_owned_objects(kube_api) -> None:
    import kubernetes

    api = kube_api.client()
    core = kubernetes.client.CoreV1Api(api)
    version = kubernetes.client.VersionApi(api).get_code()
    assert (version.major, version.minor) == ("1", "20")
    owner = core.create_namespaced_config_map("default", {
        "metadata": {"name": "owner"}, "data": {"a": "1"}})
    core.create_namespaced_config_map("default", {"metadata": {
        "name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                              "name": "owner", "uid": owner.metadata.uid}]}})
    core.delete_namespaced_config_map("owner", "default")
    deadline = time.monotonic() + 30
    names = {"owned"}
    while time.monotonic() < deadline:
        names = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
        if "owned" not in names:
            break
        time.sleep(0.2)
    assert "owned" not in names  # the controller-manager's garbage collector removed it
