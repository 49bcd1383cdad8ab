"""Success-rate outlier ejection (Envoy's): a replica whose 5xx share is far above its peers'
is ejected, at most ``max_ejected_share`` of a variant at once; a model that fails on every
replica alike ejects none. Pool tables with a stepped clock, then real servers and a router."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from router.balance import Endpoint, Pool
from tests.router.test_resilience import BODY, load


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def judged(rates: list[tuple[int, int]], **settings: float) -> list[str]:
    """Feed each endpoint (answers, errors) in one window, end it; the addresses ejected."""
    clock = Clock()
    pool = Pool([Endpoint(str(i)) for i in range(len(rates))], clock=clock,
                outlier_interval=10, **settings)
    for endpoint, (answers, errors) in zip(pool.endpoints, rates, strict=True):
        for i in range(answers):
            assert pool.record_answer(endpoint, error=i < errors) == []
    clock.now += 10
    return [e.address for e in pool.record_answer(pool.endpoints[-1], error=False)]


@pytest.mark.parametrize("rates, settings, ejected", [
    ([(50, 50), (50, 0), (50, 0)], {}, ["0"]),                     # always 500, peers fine
    ([(50, 50), (50, 50), (50, 50)], {}, []),                      # the model fails everywhere
    ([(50, 50), (50, 40), (50, 45)], {}, []),                      # peers nearly as bad
    ([(50, 20), (50, 0), (50, 0)], {}, []),                        # 40% < min error rate 50%
    ([(10, 10), (50, 0), (50, 0)], {}, []),                        # too few answers to judge
    ([(50, 50), (5, 0)], {}, []),                                  # no peer with enough answers
    ([(50, 50), (50, 50), (50, 0), (50, 0)], {"max_ejected_share": 0.25}, ["0"]),  # one at most
    ([(50, 50), (50, 50), (50, 0), (50, 0)], {"max_ejected_share": 0.5}, ["0", "1"]),
    ([(50, 50), (50, 50), (50, 50), (50, 0), (50, 0), (50, 0)], {"max_ejected_share": 0.34},
     ["0", "1"]),                                                  # two of six at most
])
def test_success_rate_outliers(rates, settings, ejected) -> None:
    assert sorted(judged(rates, **settings)) == ejected


def test_a_window_resets_and_ejection_expires() -> None:
    clock = Clock()
    bad, good = Endpoint("bad"), Endpoint("good")
    pool = Pool([bad, good], clock=clock, outlier_interval=1, outlier_min_requests=5,
                eject_seconds=5)
    for _ in range(10):
        pool.record_answer(bad, error=True)
        pool.record_answer(good, error=False)
    clock.now += 1
    assert pool.record_answer(good, error=False) == [bad]
    assert (bad.answers, good.answers) == (0, 0)                   # a new window
    assert all(pool.choose() is good for _ in range(20))
    clock.now += 5
    assert {pool.choose().address for _ in range(50)} == {"bad", "good"}


def _model(folder: Path, runtime: str) -> Path:
    (folder / "e").mkdir(parents=True)
    (folder / "e" / "model-settings.yaml").write_text(yaml.safe_dump({
        "runtime": f"turnout_test_runtimes:{runtime}",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}))
    return folder


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, start_servers):
    root = tmp_path_factory.mktemp("outliers")
    ok, bad = _model(root / "ok", "Echo"), _model(root / "bad", "Failing")
    procs = start_servers([ok, ok, bad, bad])
    yield dict(zip(["ok1", "ok2", "bad1", "bad2"], procs, strict=True))
    for proc in procs:
        proc.stop()


UPSTREAM = {"outlier_interval_seconds": 0.5, "outlier_min_requests": 5, "eject_seconds": 30,
            "health_check": {"interval_seconds": 0.5}}


def test_an_always_500_replica_is_ejected_and_clients_stop_seeing_errors(
        replicas, router_cls, tmp_path) -> None:
    ok1, ok2, bad = replicas["ok1"], replicas["ok2"], replicas["bad1"]
    r = router_cls({"services": [{"name": "e", "upstream": UPSTREAM, "variants": [
        {"name": "default", "weight": 1, "http": [ok1.url, ok2.url, bad.url]}]}]},
        tmp_path, grpc=False)
    try:
        labels = {"service": "e", "variant": "default"}
        first: list[int] = []
        deadline = time.monotonic() + 20
        while not r.sample("turnout_router_ejections_total", **labels, endpoint=bad.url) \
                and time.monotonic() < deadline:                # windows of 0.5 s
            first += load(r.url, 30, path="/v2/models/e/infer", body=BODY, threads=3)
        assert r.sample("turnout_router_ejections_total", **labels, endpoint=bad.url) == 1
        assert 0 < first.count(500) < len(first) / 2         # the bad replica's share, before
        then = load(r.url, 150, path="/v2/models/e/infer", body=BODY, threads=3)
        assert then == [200] * 150                           # ejected for 30 s
        for healthy in (ok1, ok2):
            assert not r.sample("turnout_router_ejections_total", **labels,
                                endpoint=healthy.url)
    finally:
        r.stop()


def test_a_model_failing_on_every_replica_ejects_none(replicas, router_cls, tmp_path) -> None:
    bad1, bad2 = replicas["bad1"], replicas["bad2"]
    r = router_cls({"services": [{"name": "e", "upstream": UPSTREAM, "variants": [
        {"name": "default", "weight": 1, "http": [bad1.url, bad2.url]}]}]},
        tmp_path, grpc=False)
    try:
        statuses: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 2:                # four outlier windows
            statuses += load(r.url, 30, path="/v2/models/e/infer", body=BODY, threads=3)
        assert statuses == [500] * len(statuses)             # passed on, never retried
        labels = {"service": "e", "variant": "default"}
        for endpoint in (bad1, bad2):
            assert not r.sample("turnout_router_ejections_total", **labels, endpoint=endpoint.url)
            assert r.sample("turnout_router_upstream_requests_total", **labels,
                            endpoint=endpoint.url, outcome="500") > 20
    finally:
        r.stop()
