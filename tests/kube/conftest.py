"""A real Kubernetes API server (v1.20.2, with etcd and the controller-manager's garbage
collector) on loopback ports, one per test session.

It is built from Debian's sources by ``scripts/k8s/build-control-plane.sh`` (cached under
``~/.cache/k8s-cp-1.20.2``; ``.ci/run`` builds it before the tests) and started by
``scripts/k8s/control-plane.sh``. There is no scheduler or kubelet: pods stay Pending, and tests
simulate readiness through the status subresource. A missing build is a test failure with the
command to run, never a skip: Kubernetes is not absent hardware.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "k8s"
BIN = Path(os.environ.get("TURNOUT_K8S_BIN",
                          Path.home() / ".cache" / "k8s-cp-1.20.2" / "bin"))


@dataclass(frozen=True)
class KubeAPI:
    """A running API server: its kubeconfig, and a client configured for it."""

    kubeconfig: Path
    url: str
    token: str = "testtoken"

    def client(self):  # -> kubernetes.client.ApiClient
        import kubernetes

        config = kubernetes.client.Configuration()
        config.host = self.url
        config.verify_ssl = False
        config.api_key = {"authorization": f"Bearer {self.token}"}
        return kubernetes.client.ApiClient(config)


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeAPI]:
    missing = [b for b in ("kube-apiserver", "kube-controller-manager") if not (BIN / b).exists()]
    if missing:
        pytest.fail(f"no {', '.join(missing)} in {BIN}: run scripts/k8s/build-control-plane.sh "
                    "(once per machine; .ci/run does)")
    import urllib3

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    state = Path(tempfile.mkdtemp(prefix="turnout-kube-")) / "cp"
    for attempt in range(3):  # free ports can be taken before etcd binds them (and its peer
        port = free_port()    # port, ETCD_PORT + 1, is not checked at all): start again
        env = {**os.environ, "BIN": str(BIN), "D": str(state), "PORT": str(port),
               "ETCD_PORT": str(free_port()), "KCM": "1"}
        started = subprocess.run(["bash", str(SCRIPTS / "control-plane.sh"), "start"], env=env,
                                 capture_output=True, text=True, timeout=120)
        if started.returncode == 0:
            break
        subprocess.run(["bash", str(SCRIPTS / "control-plane.sh"), "stop"], env=env, timeout=60)
        if attempt == 2:
            pytest.fail(f"the API server did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield KubeAPI(kubeconfig=state / "kubeconfig", url=f"https://127.0.0.1:{port}")
    finally:
        subprocess.run(["bash", str(SCRIPTS / "control-plane.sh"), "stop"], env=env, timeout=60)
