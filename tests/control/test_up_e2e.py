"""``turnout up`` with real processes: KServe manifests come up behind the router and change.

Each test runs one plane on free loopback ports in its own folder; model servers are real
``turnout serve`` processes, so these tests are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.control.planes import ROW, Up, events, gauges_match_status, isvc

pytestmark = pytest.mark.slow


def test_canary_comes_up_splits_traffic_promotes_rolls_back_and_restarts(
        models: Path, tmp_path: Path, up: list[Up]) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    plane = Up(tmp_path, isvc("iris", f"file://{models}/v1"),
               isvc("iris", f"file://{models}/v2", percent=10))
    up.append(plane)
    plane.wait(lambda: all(v["replicas"]["ready"] == 1 for v in plane.status()["variants"])
               and len(plane.status()["variants"]) == 2, what="canary up")
    plane.wait(lambda: plane.infer() == 200, what="router serving")
    v1 = httpx.post(f"{plane.url}/v1/models/iris:predict", json={"instances": [[6.7, 3.0, 5.2, 2.3]]})
    assert v1.status_code == 200 and len(v1.json()["predictions"]) == 1
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{plane.grpc_port}")
    inp = grpcclient.InferInput("x", [1, 4], "FP64")
    inp.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
    assert client.infer("iris", [inp]).as_numpy("predict").shape == (1,)

    before = plane.variant_counts()
    n = 300
    with httpx.Client() as http:
        for _ in range(n):
            assert http.post(f"{plane.url}/v2/models/iris/infer", json=ROW).status_code == 200
    after = plane.variant_counts()
    canary = after.get("canary", 0) - before.get("canary", 0)
    # Binomial(300, 0.1): mean 30, sd 5.2; ±4.5 sd keeps this test from flaking.
    assert 7 <= canary <= 53, (canary, after)

    assert "promoted iris-00002" in plane.cli("rollout", "promote", "iris")
    state = plane.status()
    assert (state["stable"], state["canary"]) == ("iris-00002", None)

    plane.cli("apply", "-f", plane.write("v3.yaml", isvc("iris", f"file://{models}/v1", percent=50)))
    plane.wait(lambda: plane.status()["variants"][1]["replicas"]["ready"] == 1, what="rev 3")
    plane.cli("apply", "-f", plane.write("v3.yaml", isvc("iris", f"file://{models}/v1", percent=0)))
    state = plane.status()
    assert (state["phase"], [v["role"] for v in state["variants"]]) == ("rolled-back", ["stable"])
    plane.cli("apply", "-f", plane.write("v3.yaml", isvc("iris", f"file://{models}/v1")))
    assert plane.status()["stable"] == "iris-00003"   # field removed: promoted

    plane.cli("apply", "-f", plane.write("v4.yaml", isvc("iris", f"file://{models}/v2", percent=30)))
    assert "rolled back iris-00004" in plane.cli("rollout", "rollback", "iris")

    # A killed runtime is restarted; with two replicas the router retries on the other one.
    plane.cli("apply", "-f", plane.write("v5.yaml", isvc("iris", f"file://{models}/v1",
                                                         minReplicas=2, maxReplicas=2)))
    plane.wait(lambda: plane.status()["variants"][0]["replicas"]["ready"] == 2, what="2 replicas")
    pids = json.loads((tmp_path / ".turnout" / "replicas.json").read_text())["iris-00003"]
    os.kill(pids[0], signal.SIGKILL)
    failures = sum(plane.infer() != 200 for _ in range(100))
    assert failures == 0
    plane.wait(lambda: plane.status()["variants"][0]["replicas"]["restarts"] == 1
               and plane.status()["variants"][0]["replicas"]["ready"] == 2, what="restart")


def test_progressive_rollout_rolls_back_a_failing_canary_and_promotes_a_good_one(
        models: Path, tmp_path: Path, up: list[Up]) -> None:
    rollout = {"rollout": {"steps": [20, 50, 100], "interval": "1s",
                           "analysis": {"minRequests": 8, "maxErrorRate": 0.1, "maxHolds": 30}}}
    plane = Up(tmp_path, isvc("iris", f"file://{models}/v1", minReplicas=0, maxReplicas=1,
                              turnout={"autoscaling": {"scaleToZeroGrace": "1s",
                                                       "stableWindow": "2s"}}))
    up.append(plane)
    # minReplicas 0: the service scales to zero when idle, and its first request still works.
    plane.wait(lambda: plane.status()["variants"][0]["replicas"]["total"] == 0, what="to zero")
    assert plane.infer() == 200

    before = events(plane)
    plane.cli("apply", "-f", plane.write("bad.yaml", {
        **isvc("iris", f"file://{models}/flaky", turnout=rollout)}))

    def rolled_back() -> bool:
        for _ in range(20):
            plane.infer()
        return plane.status()["phase"] == "rolled-back"

    plane.wait(rolled_back, timeout=90, what="automatic rollback")
    assert any("error rate" in e["message"] for e in plane.status()["events"])
    # ... and as metrics: the counters moved by exactly the events recorded
    after = events(plane)
    assert {k: after[k] - before[k] for k in ("started", "rolled_back", "promoted")} == \
        {"started": 1, "rolled_back": 1, "promoted": 0}
    assert after["created"] == 1
    plane.wait(lambda: gauges_match_status(plane), timeout=10, what="gauges = status")

    plane.cli("apply", "-f", plane.write("good.yaml", isvc("iris", f"file://{models}/v2",
                                                           turnout=rollout)))

    def promoted() -> bool:
        for _ in range(20):
            assert plane.infer() == 200
        return plane.status()["stable"] == "iris-00003"

    plane.wait(promoted, timeout=90, what="promotion")
    last = events(plane)
    assert {k: last[k] - after[k] for k in ("started", "step", "promoted", "rolled_back")} == \
        {"started": 1, "step": 1, "promoted": 1, "rolled_back": 0}  # 20% -> 50% -> promoted
    plane.wait(lambda: gauges_match_status(plane), timeout=10, what="gauges = status")


@pytest.mark.slow
def test_load_raises_replicas_and_idleness_lowers_them(models: Path, tmp_path: Path,
                                                        up: list[Up]) -> None:
    import threading

    slow = models / "slow"
    plane = Up(tmp_path, isvc("iris", f"file://{slow}", minReplicas=1, maxReplicas=2,
                              scaleMetric="concurrency", scaleTarget=2,
                              turnout={"autoscaling": {"stableWindow": "3s",
                                                       "panicWindow": "1s"}}))
    up.append(plane)
    plane.wait(lambda: plane.infer() == 200, what="serving")

    def replicas() -> int:
        return int(plane.status()["variants"][0]["replicas"]["total"])

    assert replicas() == 1
    stop = threading.Event()
    failures: list[int] = []

    def load() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                code = http.post(f"{plane.url}/v2/models/iris/infer", json=ROW).status_code
                if code != 200:
                    failures.append(code)

    workers = [threading.Thread(target=load) for _ in range(8)]
    for worker in workers:
        worker.start()
    try:  # 8 in flight against a target of 2 per replica: scale to the maximum
        plane.wait(lambda: replicas() == 2, timeout=60, what="scale up under load")
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert failures == []
    plane.wait(lambda: replicas() == 1, timeout=60, what="scale down when idle")
