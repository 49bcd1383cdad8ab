"""Shadow traffic: copies reach the shadow, the client sees neither its output nor its latency,
differences are measured, and a slow shadow is bounded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.native_support import weakly_referenced_compiled

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, -2.0]}]}


def shadow_routes(upstreams, *, max_in_flight=64, shadow="shadow"):
    a1, s = upstreams["a1"], upstreams[shadow]
    return {"services": [{"name": "m", "variants": [
        {"name": "default", "weight": 1, "http": [a1.url], "grpc": [a1.grpc_url]},
        {"name": "shadow", "weight": 0, "http": [s.url], "grpc": [s.grpc_url]}],
        "mirror": {"variant": "shadow", "percent": 100, "max_in_flight": max_in_flight}}]}


def served_by_shadow(upstream) -> float:
    text = httpx.get(f"{upstream.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("turnout_requests_total{") and 'model="m"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_shadow_gets_copies_without_delaying_or_altering_the_primary(upstreams, router_cls,
                                                                     tmp_path):
    r = router_cls(shadow_routes(upstreams), tmp_path, grpc=False)
    before = served_by_shadow(upstreams["shadow"])
    try:
        n = 10
        with httpx.Client() as client:
            for _ in range(n):
                started = time.perf_counter()
                resp = client.post(f"{r.url}/v2/models/m/infer", json=BODY)
                elapsed = time.perf_counter() - started
                assert resp.status_code == 200
                assert resp.headers["x-turnout-variant"] == "default"
                assert resp.json()["outputs"][0]["data"] == [1.5, -2.0]  # never the shadow's 2x
                assert elapsed < 0.2, elapsed  # the shadow takes 0.3 s per request
        labels = {"service": "m", "variant": "shadow"}
        assert wait_for(lambda: r.sample("turnout_router_shadow_requests_total", **labels,
                                         outcome="compared") == n)
        assert served_by_shadow(upstreams["shadow"]) - before == n
        assert r.sample("turnout_router_shadow_compared_elements_total", **labels,
                        kind="numeric") == 2 * n
        # shadow doubles, primary echoes: |2x - x| = |x| = 1.5 + 2.0 per request
        assert r.sample("turnout_router_shadow_abs_difference_total", **labels) == \
            pytest.approx(3.5 * n)
    finally:
        r.stop()


def test_no_copy_goes_to_the_variant_that_answered(upstreams, router_cls, tmp_path):
    """A canary that is also the mirror target: requests it serves itself are not mirrored to
    it (they would only agree with themselves and inflate the agreement rate)."""
    routes = shadow_routes(upstreams)
    routes["services"][0]["rules"] = [{"header": {"x-experiment": "b"}, "variant": "shadow"}]
    r = router_cls(routes, tmp_path)
    labels = {"service": "m", "variant": "shadow"}
    before = served_by_shadow(upstreams["shadow"])
    try:
        with httpx.Client() as client:
            for experiment in ("b", "b", "b", "a", "a"):
                resp = client.post(f"{r.url}/v2/models/m/infer", json=BODY,
                                   headers={"x-experiment": experiment})
                assert resp.status_code == 200
                assert resp.headers["x-turnout-variant"] == \
                    ("shadow" if experiment == "b" else "default")
            # copies outlive the client's connection: they must not hold it weakly (a compiled
            # protocol's weak references are freed twice when it goes: tests/native_support.py)
            assert weakly_referenced_compiled() == []
        assert wait_for(lambda: r.sample("turnout_router_shadow_requests_total", **labels,
                                         outcome="compared") == 2)
        time.sleep(0.5)  # a stray copy would have landed by now
        assert served_by_shadow(upstreams["shadow"]) - before == 3 + 2  # 3 served, 2 copies
        assert r.sample("turnout_router_shadow_requests_total", **labels,
                        outcome="compared") == 2
    finally:
        r.stop()


def test_v1_shadow_agreement_counts_classes(upstreams, router_cls, tmp_path):
    a1, b = upstreams["a1"], upstreams["b"]
    config = {"services": [{"name": "iris", "variants": [
        {"name": "tree", "weight": 1, "model": "iris_tree", "http": [a1.url]},
        {"name": "logreg", "weight": 0, "model": "iris_logreg", "http": [b.url]}],
        "mirror": {"variant": "logreg"}}]}
    r = router_cls(config, tmp_path, grpc=False)
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(40, 4)).tolist()
    try:
        with httpx.Client() as client:
            tree = [client.post(f"{r.url}/v1/models/iris:predict", json={"instances": [row]})
                    .json()["predictions"][0] for row in rows]
            logreg = [client.post(f"{b.url}/v1/models/iris_logreg:predict",
                                  json={"instances": [row]}).json()["predictions"][0]
                      for row in rows]
        labels = {"service": "iris", "variant": "logreg"}
        assert wait_for(lambda: r.sample("turnout_router_shadow_requests_total", **labels,
                                         outcome="compared") == len(rows))
        assert r.sample("turnout_router_shadow_compared_elements_total", **labels,
                        kind="class") == len(rows)
        agreed = sum(t == s for t, s in zip(tree, logreg, strict=True))
        assert r.sample("turnout_router_shadow_agreed_elements_total", **labels) == agreed
        assert 0 < agreed < len(rows)  # the two real models disagree on some rows
    finally:
        r.stop()


def test_slow_shadow_is_bounded_and_never_slows_clients(upstreams, router_cls, tmp_path):
    r = router_cls(shadow_routes(upstreams, max_in_flight=2), tmp_path, grpc=False)
    try:
        client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=8))

        def one(_: int) -> float:
            started = time.perf_counter()
            assert client.post(f"{r.url}/v2/models/m/infer", json=BODY).status_code == 200
            return time.perf_counter() - started

        with ThreadPoolExecutor(8) as pool:
            latencies = sorted(pool.map(one, range(40)))
        client.close()
        # a copy takes 0.3 s; had the primary waited for it, the median would be over that
        assert latencies[len(latencies) // 2] < 0.15, latencies
        labels = {"service": "m", "variant": "shadow"}
        dropped = r.sample("turnout_router_shadow_requests_total", **labels, outcome="dropped")
        sent = r.sample("turnout_router_shadow_requests_total", **labels, outcome="sent")
        assert dropped > 0 and sent + dropped == 40
        assert r.call(lambda: r.server.router.shadower.in_flight()) <= 2
    finally:
        r.stop()
