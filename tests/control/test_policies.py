"""The pure policies as tables: rollout analysis, autoscaling, KServe canary semantics, routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.control.local.supervisor import ReplicaSpec
from serving.control.policy.autoscale import ScalePolicy, ScaleState, Window, decide
from serving.control.policy.observe import Totals, quantile, window
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import Pin, apply_manifest, promote, rollback
from serving.control.policy.rollout import VariantWindow, analyse
from serving.control.policy.routes import Endpoints, router_config
from serving.spec import Analysis, load_texts

A = Analysis(minRequests=20, maxErrorRate=0.05, maxErrorRateIncrease=0.02, maxP99Seconds=1.0,
             maxP99Ratio=2.0, p99FloorSeconds=0.01, maxHolds=3)
STEPS = [10, 25, 50, 100]
OK = VariantWindow(requests=100, errors=0, p99_seconds=0.02)


@pytest.mark.parametrize("percent, holds, canary, stable, action, new, why", [
    (10, 0, VariantWindow(requests=5), OK, "hold", 10, "5 canary requests"),
    (10, 2, VariantWindow(requests=5), OK, "rollback", 0, "after 3 intervals"),
    (10, 0, VariantWindow(requests=100, errors=10), OK, "rollback", 0, "error rate 0.100 > 0.05"),
    (10, 0, VariantWindow(requests=100, errors=4),
     VariantWindow(requests=100, errors=1), "rollback", 0, "exceeds stable's"),
    (10, 0, VariantWindow(requests=100, errors=4),
     VariantWindow(requests=100, errors=3), "advance", 25, "passed"),
    (10, 0, VariantWindow(requests=100, p99_seconds=1.5), OK, "rollback", 0, "> 1000.0 ms"),
    (10, 0, VariantWindow(requests=100, p99_seconds=0.05), OK, "rollback", 0, "2.50x stable"),
    (10, 0, VariantWindow(requests=100, p99_seconds=0.008),
     VariantWindow(requests=100, p99_seconds=0.001), "advance", 25, "passed"),  # under the floor
    (25, 0, OK, OK, "advance", 50, "passed"),
    (50, 0, OK, OK, "promote", 100, "passed"),
    (10, 0, OK, VariantWindow(), "advance", 25, "passed"),  # stable idle: absolute checks only
])
def test_rollout_analysis(percent, holds, canary, stable, action, new, why) -> None:
    verdict = analyse(analysis=A, steps=STEPS, percent=percent, holds=holds, canary=canary,
                      stable=stable)
    assert (verdict.action, verdict.percent) == (action, new)
    assert why in verdict.reason


@pytest.mark.parametrize("compared, agreed, action", [
    (0, 0, "hold"), (100, 99, "advance"), (100, 80, "rollback")])
def test_rollout_analysis_with_mirror_agreement(compared, agreed, action) -> None:
    analysis = A.model_copy(update={"minAgreement": 0.95})
    canary = VariantWindow(requests=100, compared=compared, agreed=agreed)
    assert analyse(analysis=analysis, steps=STEPS, percent=10, holds=0, canary=canary,
                   stable=OK).action == action


P = ScalePolicy(min_replicas=1, max_replicas=5, target=10, stable_window=60, panic_window=6,
                panic_threshold=2.0, scale_to_zero_grace=30, max_scale_down_rate=2.0)


@pytest.mark.parametrize("policy, state, stable, panic, waiting, now, want, why", [
    (P, ScaleState(1), 5, 5, 0, 100, 1, "load 5.00"),
    (P, ScaleState(1), 25, 25, 0, 100, 3, "panic"),            # 25/10 = 3 ≥ 2x current
    (P, ScaleState(2), 15, 15, 0, 100, 2, "load"),              # 2 wanted, no panic
    (P, ScaleState(4), 5, 5, 0, 100, 2, "load"),                # down, at most halved
    (P, ScaleState(3, panic_until=150), 5, 5, 0, 100, 3, "panic"),  # no scale down in panic
    (P, ScaleState(3, panic_until=90), 5, 5, 0, 100, 1, "load"),    # panic over: 3//2
    (P, ScaleState(1), 500, 500, 0, 100, 5, "panic"),           # capped at max
    (P, ScaleState(1), 0, 0, 0, 100, 1, "load"),                # min 1
    (ScalePolicy(min_replicas=0, max_replicas=2, target=10), ScaleState(1, last_active=90),
     0, 0, 0, 100, 1, "grace"),
    (ScalePolicy(min_replicas=0, max_replicas=2, target=10), ScaleState(1, last_active=50),
     0, 0, 0, 100, 0, "scale to zero"),
    (ScalePolicy(min_replicas=0, max_replicas=2, target=10), ScaleState(0, last_active=50),
     0, 0, 3, 100, 1, "waiting"),
])
def test_autoscale_decision(policy, state, stable, panic, waiting, now, want, why) -> None:
    decision = decide(policy=policy, state=state, stable_load=stable, panic_load=panic,
                      waiting=waiting, now=now)
    assert decision.replicas == want
    assert why in decision.reason


def test_window_averages_only_recent_samples() -> None:
    w = Window(10)
    for t, v in ((0, 100), (5, 2), (12, 4)):
        w.add(t, v)
    assert w.average() == 3


def iss(uri: str, percent: int | None = None, rollout: bool = False):
    canary = f"\n    canaryTrafficPercent: {percent}" if percent is not None else ""
    extra = "\n  turnout: {rollout: {steps: [10, 50, 100]}}" if rollout else ""
    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris}}
spec:
  predictor:{canary}
    model: {{modelFormat: {{name: sklearn}}, storageUri: {uri}}}{extra}
""")]).services[0]


def test_kserve_canary_semantics_step_by_step() -> None:
    s = apply_manifest(None, iss("a", 10), now=1)
    assert (s.stable, s.canary) == ("iris-00001", None)          # first revision: all traffic
    s = apply_manifest(s, iss("b", 10), now=2)
    assert (s.stable, s.canary, s.percent, s.phase) == ("iris-00001", "iris-00002", 10, "canary")
    s = apply_manifest(s, iss("b", 30), now=3)
    assert s.percent == 30
    s = apply_manifest(s, iss("b", 0), now=4)
    assert (s.percent, s.phase, s.serving()) == (0, "rolled-back", {"stable": "iris-00001"})
    s = apply_manifest(s, iss("b", 0), now=5)                    # same manifest: no change
    assert s.phase == "rolled-back"
    s = apply_manifest(s, iss("b"), now=6)                       # field removed: promote
    assert (s.stable, s.canary, s.phase) == ("iris-00002", None, "stable")
    s = apply_manifest(s, iss("c"), now=7)                       # no canary field: straight in
    assert (s.stable, s.canary) == ("iris-00003", None)
    s = apply_manifest(s, iss("d", 20), now=8)
    assert promote(s, now=9, reason="cli").stable == "iris-00004"
    assert rollback(s, now=9, reason="cli").serving() == {"stable": "iris-00003"}
    assert "rolled back" in rollback(s, now=9, reason="cli").events[-1].message


def test_progressive_rollout_starts_at_the_first_step_and_survives_reapply() -> None:
    s = apply_manifest(apply_manifest(None, iss("a"), now=1), iss("b", rollout=True), now=2)
    assert (s.canary, s.percent, s.phase) == ("iris-00002", 10, "progressing")
    s = rollback(s, now=3, reason="analysis")
    assert apply_manifest(s, iss("b", rollout=True), now=4).phase == "rolled-back"


def test_routes_are_health_gated_and_weighted_by_role() -> None:
    s = apply_manifest(apply_manifest(None, iss("a"), now=1), iss("b", 25), now=2)
    both = {"iris-00001": Endpoints(["http://127.0.0.1:1"], ["127.0.0.1:2"]),
            "iris-00002": Endpoints(["http://127.0.0.1:3"], ["127.0.0.1:4"])}
    plan = router_config(services=[(iss("b", 25), s)], endpoints=both, graphs=[])
    weights = {v.name: v.weight for v in plan.config.services[0].variants}
    assert weights == {"stable": 75, "canary": 25}
    assert plan.config.upstream.grpc_via_http  # Turnout servers: the cheaper gRPC hop
    plan = router_config(services=[(iss("b", 25), s)], endpoints={"iris-00001": both["iris-00001"]},
                         graphs=[])
    assert [v.name for v in plan.config.services[0].variants] == ["stable"]
    assert "no ready replica" in plan.omitted[0]
    at_zero = router_config(services=[(iss("b", 25), s)], endpoints={}, graphs=[],
                            at_zero=frozenset({"iris-00001", "iris-00002"}), hold_seconds=45)
    variants = at_zero.config.services[0].variants
    # a revision at zero is listed without endpoints: the router holds its requests
    assert {(v.name, v.model, tuple(v.http), tuple(v.grpc)) for v in variants} == {
        ("stable", "iris", (), ()), ("canary", "iris", (), ())}
    assert at_zero.config.services[0].upstream.hold_seconds == 45


@pytest.mark.parametrize("buckets, q, want", [
    ({0.1: 0, 0.5: 100, float("inf"): 100}, 0.99, 0.496),
    ({0.1: 50, 0.5: 100, float("inf"): 100}, 0.5, 0.1),
    ({0.1: 0, float("inf"): 10}, 0.99, 0.1),
    ({}, 0.99, None),
])
def test_histogram_quantile(buckets, q, want) -> None:
    got = quantile(q, buckets)
    assert got == pytest.approx(want) if want is not None else got is None


def test_window_is_the_difference_of_two_reads() -> None:
    then = Totals(requests=10, errors=1, buckets={0.1: 10, float("inf"): 10})
    now = Totals(requests=110, errors=6, buckets={0.1: 110, float("inf"): 110})
    w = window(now, then)
    assert (w.requests, w.errors, w.p99_seconds) == (100, 5, pytest.approx(0.099))


def test_kserve_batcher_reaches_the_model_servers_flags() -> None:
    from serving.control.local.supervisor import ReplicaSpec
    from serving.control.policy.revisions import _revision
    text = """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    batcher: {maxBatchSize: 24, maxLatency: 5}
    model: {modelFormat: {name: sklearn}, storageUri: file:///models/iris}
"""
    isvc = load_texts([(Path("m.yaml"), text)]).services[0]
    revision = _revision(isvc, 1)
    spec = ReplicaSpec(revision.name, "iris", "/models/iris", "sklearn", revision.max_batch_size,
                       revision.max_batch_latency_ms)
    assert spec.serve_flags() == ["--runtime", "sklearn", "--max-batch-size", "24",
                                  "--max-batch-latency-ms", "5"]
    no_batcher = _revision(load_texts([(Path("m.yaml"), text.replace(
        "    batcher: {maxBatchSize: 24, maxLatency: 5}\n", ""))]).services[0], 2)
    assert ReplicaSpec("r", "iris", "/m", None, no_batcher.max_batch_size).serve_flags() == []


def test_a_service_with_its_own_upstream_keeps_the_planes_defaults() -> None:
    s = apply_manifest(None, iss("a"), now=1)
    plan = router_config(services=[(iss("a"), s)], endpoints={}, graphs=[],
                         at_zero=frozenset({"iris-00001"}), health_interval=0.5)
    upstream = plan.config.services[0].upstream
    # the router replaces the top-level upstream with a service's own: nothing may get lost
    assert upstream.hold_seconds > 0 and upstream.grpc_via_http
    assert upstream.health_check.interval_seconds == 0.5


def test_a_moved_registry_alias_is_a_new_revision_pinned_to_the_version() -> None:
    """models:/iris@champion: the manifest never changes; the version it resolves to does."""
    alias = "models:/iris@champion"
    v1, v2 = Pin(uri="models:/iris/1", version="1"), Pin(uri="models:/iris/2", version="2")
    s = apply_manifest(None, iss(alias, rollout=True), now=1, resolved_uri="/r/1", pin=v1)
    first = s.revisions[s.stable]
    assert (first.pinned_uri, first.model_version, first.resolved_uri) == (v1.uri, "1", "/r/1")
    assert "models:/iris@champion = models:/iris/1" in s.events[-1].message
    assert apply_manifest(s, iss(alias, rollout=True), now=2, resolved_uri="/r/1", pin=v1) is s
    s = apply_manifest(s, iss(alias, rollout=True), now=3, resolved_uri="/r/2", pin=v2)
    assert (s.stable, s.canary, s.phase, s.percent) == ("iris-00001", "iris-00002", "progressing", 10)
    assert s.revisions["iris-00002"].model_version == "2"
    # A rolled-back version stays rolled back while the alias still points at it ...
    s = rollback(s, now=4, reason="analysis")
    assert apply_manifest(s, iss(alias, rollout=True), now=5, resolved_uri="/r/2", pin=v2) is s
    # ... and moving the alias back to the stable version removes the canary.
    s = apply_manifest(s, iss(alias, rollout=True), now=6, resolved_uri="/r/1", pin=v1)
    assert (s.stable, s.canary, s.events[-1].kind) == ("iris-00001", None, "removed")


def test_the_pinned_registry_version_reaches_the_servers() -> None:
    pin = Pin(uri="models:/iris/7", version="7")
    s = apply_manifest(None, iss("models:/iris@champion"), now=1, resolved_uri="/cache/7", pin=pin)
    desired = plan(services=[(iss("models:/iris@champion"), s)], graphs=[], observed=Observed())
    workload = desired.workloads[s.stable]
    assert (workload.storage_uri, workload.model_version) == ("/cache/7", "7")
    spec = ReplicaSpec(s.stable, workload.model_name, workload.storage_uri, workload.runtime,
                       model_version=workload.model_version)
    assert spec.serve_flags()[-2:] == ["--model-version", "7"]
