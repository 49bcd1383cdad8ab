"""``turnout up`` end to end, one plane for the module: gRPC cold starts held by the router,
mirrored (shadow) traffic, and a rollout rolled back because its canary disagrees with stable.

Two services share the plane: ``cold`` (minReplicas 0, at zero between uses) and ``iris``
(whose manifests the tests change; each test first applies the state it needs). Real
``turnout serve`` processes and a real router, so the module is marked slow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.control.planes import Up, events, gauges_match_status, isvc, sample, sample_sum

pytestmark = pytest.mark.slow
COLD = {"autoscaling": {"scaleToZeroGrace": "1s", "stableWindow": "2s"}}


@pytest.fixture(scope="module")
def plane(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("traffic"), isvc("iris", f"file://{models}/v1"),
            isvc("cold", f"file://{models}/v1", minReplicas=0, maxReplicas=1, turnout=COLD))
    try:
        up.wait(lambda: up.infer() == 200, what="iris serving")
        yield up
    finally:
        assert up.stop() == 0, (up.folder / "up.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)[0][::3]  # 50 rows of every class


def predict(models: Path, name: str, x: np.ndarray) -> np.ndarray:
    """What the model in ``models/name`` answers in process, for comparing with the served one."""
    import joblib

    return joblib.load(models / name / "model.joblib").predict(x)


def infer_row(http: httpx.Client, url: str, row: np.ndarray, **headers: str) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row.tolist()}]}
    return http.post(f"{url}/v2/models/iris/infer", json=body, headers=headers, timeout=30)


def test_grpc_to_a_service_at_zero_is_held_by_the_router_until_a_replica_answers(
        plane: Up, models: Path, rows: np.ndarray) -> None:
    import tritonclient.grpc as grpcclient

    plane.wait(lambda: plane.variant("stable", "cold")["replicas"]["total"] == 0, timeout=30,
               what="cold at zero")
    x = rows[:8]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{plane.grpc_port}")
    tensor = grpcclient.InferInput("x", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)
    # The first request after scale-to-zero: the router holds it, the plane reads the held
    # request as demand and starts a replica, the router sends it on once the routes list
    # that replica (a cold start takes seconds here).
    result = client.infer("cold", [tensor], client_timeout=60)
    assert result.get_response().model_name == "cold"
    np.testing.assert_array_equal(result.as_numpy("predict"), predict(models, "v1", x))
    assert any(e["kind"] == "scaled" and "cold-00001" in e["message"]
               for e in plane.status("cold")["events"])


def test_mirrored_copies_reach_the_shadow_and_never_answer_the_client(
        plane: Up, models: Path, rows: np.ndarray) -> None:
    pin = {"x-pin": "stable"}  # every client request goes to stable; the canary only sees copies
    turnout = {"rules": [{"header": pin, "variant": "stable"}], "mirror": {"percent": 100}}
    plane.cli("apply", "-f", plane.write("mirror.yaml", isvc("iris", f"file://{models}/v1"),
                                         isvc("iris", f"file://{models}/shifted", percent=10,
                                              turnout=turnout)))
    plane.wait(lambda: plane.variant("canary", "iris")["replicas"]["ready"] == 1, what="shadow up")
    primary, shadow = predict(models, "v1", rows), predict(models, "shifted", rows)
    assert (primary != shadow).sum() > len(rows) // 2  # the test can tell the two apart
    shadow_url = plane.variant("canary", "iris")["endpoints"]["http"][0]

    def shadow_served() -> float:
        text = httpx.get(f"{shadow_url}/metrics", timeout=10).text
        return sample_sum(text, "turnout_requests_total", model="iris", status="success")

    def compared() -> tuple[float, float]:
        text = plane.router_metrics()
        labels = {"service": "iris", "variant": "canary"}
        return (sample_sum(text, "turnout_router_shadow_compared_elements_total", **labels,
                           kind="class"),
                sample_sum(text, "turnout_router_shadow_agreed_elements_total", **labels))

    served_before, (compared_before, agreed_before) = shadow_served(), compared()
    with httpx.Client() as http:
        for row, want in zip(rows, primary, strict=True):
            response = infer_row(http, plane.url, row, **pin)
            assert response.status_code == 200, response.text
            assert response.headers["x-turnout-variant"] == "stable"
            assert response.json()["outputs"][0]["data"] == [want]
    n = len(rows)
    plane.wait(lambda: compared()[0] - compared_before >= n, timeout=20, what="copies compared")
    assert shadow_served() - served_before == n  # one copy per request, no more
    now_compared, now_agreed = compared()
    assert (now_compared - compared_before, now_agreed - agreed_before) == \
        (n, float((primary == shadow).sum()))


def test_a_canary_that_disagrees_with_stable_on_mirrored_traffic_is_rolled_back(
        plane: Up, models: Path, rows: np.ndarray) -> None:
    plane.cli("apply", "-f", plane.write("stable.yaml", isvc("iris", f"file://{models}/v1")))
    assert plane.status("iris")["canary"] is None
    analysis = {"minRequests": 5, "minAgreement": 0.9, "maxP99Ratio": None, "maxHolds": 30}
    turnout = {"mirror": {"percent": 100},
               "rollout": {"steps": [50, 100], "interval": "1s", "analysis": analysis}}
    before = events(plane)
    plane.cli("apply", "-f", plane.write("disagree.yaml", isvc("iris", f"file://{models}/shifted",
                                                               turnout=turnout)))
    canary = plane.status("iris")["canary"]

    def rolled_back() -> bool:
        with httpx.Client() as http:
            for row in rows[:20]:
                assert infer_row(http, plane.url, row).status_code == 200
        return plane.status("iris")["phase"] == "rolled-back"

    plane.wait(rolled_back, timeout=60, what="rollback on disagreement")
    last = [e for e in plane.status("iris")["events"] if e["kind"] == "rolled_back"][-1]
    assert f"rolled back {canary}" in last["message"]
    assert "agrees with stable on" in last["message"], last
    after = events(plane)
    assert {k: after[k] - before[k] for k in ("started", "rolled_back", "promoted", "step")} == \
        {"started": 1, "rolled_back": 1, "promoted": 0, "step": 0}
    plane.wait(lambda: gauges_match_status(plane, "iris"), timeout=10, what="gauges = status")
    text = plane.plane_metrics()
    assert sample(text, "turnout_rollout_phase", service="iris", phase="rolled-back") == 1
