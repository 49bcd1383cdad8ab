"""The plan, the rollout step and KServe's semantics as tables, with no process started."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.control.policy.autoscale import ScalePolicy, knative_ignored, scale_policy
from serving.control.policy.formats import FormatError, runtime_for
from serving.control.policy.observe import Totals, window
from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import ServiceState, apply_manifest, promote
from serving.control.policy.rollout import step
from serving.control.policy.routes import Endpoints
from serving.control.policy.validate import problems
from serving.spec import load_texts
from serving.spec.turnout import Analysis, Rollout

ROLLOUT = Rollout(steps=[10, 50, 100], interval=30,
                  analysis=Analysis(minRequests=20, maxErrorRate=0.05, maxHolds=3))


def isvc(uri: str, percent: int | None = None, *, rollout: str | None = None,
         annotations: str = "", fmt: str = "sklearn", runtime: str = "", name: str = "iris"):
    canary = f"\n    canaryTrafficPercent: {percent}" if percent is not None else ""
    extra = f"\n  turnout: {{rollout: {rollout}}}" if rollout else ""
    runtime_line = f", runtime: {runtime}" if runtime else ""
    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: {name}, annotations: {{{annotations}}}}}
spec:
  predictor:{canary}
    model: {{modelFormat: {{name: {fmt}}}, storageUri: {uri}{runtime_line}}}{extra}
""")]).services[0]


def totals(requests: float, errors: float = 0.0) -> Totals:
    return Totals(requests=requests, errors=errors,
                  buckets={0.01: requests, float("inf"): requests})


# -- the KServe canary walkthrough ("Canary Rollout Example"), step by step --------------------

def test_kserve_canary_rollout_example_step_by_step() -> None:
    s = apply_manifest(None, isvc("gs://models/v1"), now=1)              # 1. first model
    assert (s.stable, s.canary, s.serving()) == ("iris-00001", None, {"stable": "iris-00001"})
    s = apply_manifest(s, isvc("gs://models/v2", 10), now=2)             # 2. canary at 10%
    assert (s.stable, s.canary, s.percent, s.phase) == ("iris-00001", "iris-00002", 10, "canary")
    s = apply_manifest(s, isvc("gs://models/v2"), now=3)                 # 3. promote: field gone
    assert (s.stable, s.canary, s.previous, s.phase) == ("iris-00002", None, "iris-00001",
                                                         "stable")
    s = apply_manifest(s, isvc("gs://models/v2", 0), now=4)              # 4. rollback and pin
    assert (s.stable, s.canary, s.percent, s.phase) == ("iris-00001", "iris-00002", 0,
                                                        "rolled-back")
    assert s.serving() == {"stable": "iris-00001"}
    assert "previous rolled-out revision iris-00001" in s.events[-1].message
    s = apply_manifest(s, isvc("gs://models/v2", 10), now=5)             # 5. back to 10%
    assert (s.stable, s.canary, s.percent, s.phase) == ("iris-00001", "iris-00002", 10, "canary")
    s = apply_manifest(s, isvc("gs://models/v2"), now=6)                 # 6. promote again
    assert (s.stable, s.canary) == ("iris-00002", None)
    assert len(s.revisions) == 2                                         # no new revision made


@pytest.mark.parametrize("percent, stable, canary, phase", [
    (100, "iris-00002", None, "stable"),       # KServe: 100 is the new revision taking it all
    (None, "iris-00002", None, "stable"),      # no canaryTrafficPercent: straight in
    (30, "iris-00001", "iris-00002", "canary"),
    (0, "iris-00001", "iris-00002", "rolled-back"),
])
def test_a_new_revision_by_canary_traffic_percent(percent, stable, canary, phase) -> None:
    s = apply_manifest(apply_manifest(None, isvc("a"), now=1), isvc("b", percent), now=2)
    assert (s.stable, s.canary, s.phase) == (stable, canary, phase)


def test_tag_routing_reaches_latest_and_previous_revisions() -> None:
    tagged = isvc("b", 10, annotations='serving.kserve.io/enable-tag-routing: "true"')
    s = apply_manifest(apply_manifest(None, isvc("a"), now=1), tagged, now=2)
    desired = plan(services=[(tagged, s)], graphs=[], observed=Observed(endpoints={
        "iris-00001": Endpoints(["http://127.0.0.1:1"]),
        "iris-00002": Endpoints(["http://127.0.0.1:2"])}))
    routes = {svc.name: svc for svc in desired.routes.services}
    assert set(routes) == {"iris", "latest-iris", "prev-iris"}
    assert routes["latest-iris"].variants[0].http == ["http://127.0.0.1:2"]
    assert routes["prev-iris"].variants[0].http == ["http://127.0.0.1:1"]
    assert routes["latest-iris"].variants[0].model == "iris"  # servers answer to the service
    untagged = plan(services=[(isvc("b", 10), s)], graphs=[], observed=Observed())
    (only,) = untagged.routes.services  # no tags; nothing ready yet: both roles hold requests
    assert only.name == "iris" and only.upstream.hold_seconds > 0
    assert [(v.name, v.http, v.grpc) for v in only.variants] == [("stable", [], []),
                                                                  ("canary", [], [])]


# -- mid-rollout edits ------------------------------------------------------------------------

PROGRESSIVE = "{steps: [10, 50, 100], interval: 30s}"


def progressing() -> ServiceState:
    s = apply_manifest(None, isvc("a", rollout=PROGRESSIVE), now=1)
    return apply_manifest(s, isvc("b", rollout=PROGRESSIVE), now=2)


@pytest.mark.parametrize("edit, phase, percent, kind", [
    (isvc("b"), "canary", 10, "paused"),                                 # rollout removed
    (isvc("b", 30, rollout=PROGRESSIVE), "progressing", 30, "share"),    # share set, continues
    (isvc("b", 100, rollout=PROGRESSIVE), "stable", 0, "promoted"),
    (isvc("b", 0, rollout=PROGRESSIVE), "rolled-back", 0, "rolled_back"),
    (isvc("b", rollout="{steps: [20, 100], interval: 5s}"), "progressing", 10, "resumed"),
    (isvc("b", rollout=PROGRESSIVE), "progressing", 10, "started"),      # same manifest: nothing
])
def test_mid_rollout_edits_act_explicitly(edit, phase, percent, kind) -> None:
    s = progressing()
    after = apply_manifest(s, edit, now=3)
    assert (after.phase, after.percent, after.events[-1].kind) == (phase, percent, kind)


def test_adding_a_rollout_to_a_manual_canary_starts_the_analysis_at_its_share() -> None:
    s = apply_manifest(apply_manifest(None, isvc("a"), now=1), isvc("b", 25), now=2)
    s = apply_manifest(s, isvc("b", 25, rollout=PROGRESSIVE), now=3)
    assert (s.phase, s.percent, s.events[-1].kind) == ("progressing", 25, "resumed")


# -- the rollout step -------------------------------------------------------------------------

def test_step_waits_for_a_ready_canary_then_for_the_interval() -> None:
    s = progressing()
    assert step(s, ROLLOUT, canary=totals(0), stable=totals(0), canary_ready=False, now=10) is s
    s = step(s, ROLLOUT, canary=totals(5), stable=totals(50), canary_ready=True, now=10)
    assert s.baseline is not None and s.step_started == 10 and s.baseline["canary"].requests == 5
    assert step(s, ROLLOUT, canary=totals(500), stable=totals(50), canary_ready=True, now=39) is s


def test_a_canary_without_a_ready_replica_past_its_ready_timeout_is_rolled_back() -> None:
    """A version that fails to load (or crash-loops) must not hold a rollout forever."""
    rollout = ROLLOUT.model_copy(update={"readyTimeout": 60.0})
    s = progressing()
    start = s.step_started
    assert step(s, rollout, canary=None, stable=totals(0), canary_ready=False,
                now=start + 59) is s
    after = step(s, rollout, canary=None, stable=totals(0), canary_ready=False, now=start + 60)
    assert (after.phase, after.percent, after.events[-1].kind) == ("rolled-back", 0, "rolled_back")
    assert "no ready replica for 60 s" in after.events[-1].message
    # Ready, then lost: the timeout counts from when readiness was lost, not from the step.
    ready = step(s, rollout, canary=totals(5), stable=totals(5), canary_ready=True, now=start + 50)
    lost = step(ready, rollout, canary=totals(6), stable=totals(6), canary_ready=False,
                now=start + 100)
    assert (lost.phase, lost.baseline, lost.step_started) == ("progressing", None, start + 100)
    assert step(lost, rollout, canary=None, stable=None, canary_ready=False,
                now=start + 159).phase == "progressing"
    assert step(lost, rollout, canary=None, stable=None, canary_ready=False,
                now=start + 160).phase == "rolled-back"


@pytest.mark.parametrize("canary_now, errors, holds, percent, phase, kind", [
    (105, 0, 0, 50, "progressing", "step"),         # 100 good requests: advance
    (10, 0, 0, 10, "progressing", "held"),          # 5 requests: hold, window keeps growing
    (10, 0, 2, 0, "rolled-back", "rolled_back"),    # third hold: give up
    (105, 50, 0, 0, "rolled-back", "rolled_back"),  # error rate 0.5
    (3, 0, 0, 50, "progressing", "step"),           # router restarted: counted from zero
])
def test_step_decides_from_the_window_since_the_baseline(canary_now, errors, holds, percent,
                                                          phase, kind) -> None:
    s = progressing().model_copy(update={"holds": holds})
    s = step(s, ROLLOUT, canary=totals(5), stable=totals(100), canary_ready=True, now=10)
    if canary_now == 3:  # a reset router: counters below the baseline; 3 -> still too few
        s = s.model_copy(update={"baseline": {"canary": totals(5000), "stable": totals(9000)}})
        canary = Totals(requests=30, buckets={0.01: 30, float("inf"): 30})
    else:
        canary = totals(canary_now, errors)
    after = step(s, ROLLOUT, canary=canary, stable=totals(300), canary_ready=True, now=41)
    assert (after.percent, after.phase, after.events[-1].kind) == (percent, phase, kind)
    if kind == "held":
        assert after.baseline == s.baseline  # the window grows
    if kind == "step":
        assert after.baseline is not None and after.baseline["canary"] == canary


def test_last_step_promotes_and_the_state_round_trips_through_json() -> None:
    s = progressing().model_copy(update={"percent": 50})
    s = step(s, ROLLOUT, canary=totals(0), stable=totals(0), canary_ready=True, now=10)
    again = ServiceState.model_validate_json(s.model_dump_json())
    assert again == s and again.baseline is not None
    after = step(again, ROLLOUT, canary=totals(100), stable=totals(100), canary_ready=True, now=41)
    assert (after.stable, after.canary, after.events[-1].kind) == ("iris-00002", None, "promoted")


@pytest.mark.parametrize("now, then, requests", [
    (Totals(requests=110), Totals(requests=10), 100),
    (Totals(requests=7), Totals(requests=500), 7),          # reset: as Prometheus increase()
    (Totals(requests=0), None, 0),
])
def test_counter_resets_are_resets(now, then, requests) -> None:
    assert window(now, then).requests == requests


# -- the plan ---------------------------------------------------------------------------------

def test_plan_gives_workloads_per_serving_revision_and_routes() -> None:
    manifest = isvc("/m/b", 20, annotations='autoscaling.knative.dev/min-scale: "2", '
                    'autoscaling.knative.dev/max-scale: "4", autoscaling.knative.dev/target: "7"')
    s = apply_manifest(apply_manifest(None, isvc("/m/a"), now=1), manifest, now=2,
                       resolved_uri="/abs/m/b")
    desired = plan(services=[(manifest, s)], graphs=[], observed=Observed(
        endpoints={"iris-00001": Endpoints(["http://127.0.0.1:1"])}, replicas={"iris-00001": 3}))
    stable, canary = desired.workloads["iris-00001"], desired.workloads["iris-00002"]
    assert (stable.role, stable.replicas, stable.storage_uri, stable.runtime) == (
        "stable", 3, "/m/a", "sklearn")
    assert (canary.role, canary.replicas, canary.storage_uri) == ("canary", 2, "/abs/m/b")
    assert (canary.policy.min_replicas, canary.policy.max_replicas, canary.policy.target) == (
        2, 4, 7.0)
    (route,) = desired.routes.services
    assert [v.name for v in route.variants] == ["stable"]  # the canary has no ready replica
    assert "no ready replica" in desired.omitted[0]


@pytest.mark.parametrize("annotations, want", [
    ("", ScalePolicy(min_replicas=1, max_replicas=1, target=100.0)),
    ('autoscaling.knative.dev/metric: rps, autoscaling.knative.dev/target: "50"',
     ScalePolicy(min_replicas=1, max_replicas=1, target=50.0, metric="rps")),
    ('autoscaling.knative.dev/min-scale: "0", autoscaling.knative.dev/max-scale: "3", '
     'autoscaling.knative.dev/initial-scale: "2"',
     ScalePolicy(min_replicas=0, max_replicas=3, target=100.0, initial_replicas=2)),
    ('autoscaling.knative.dev/window: "20s", '
     'autoscaling.knative.dev/panic-window-percentage: "10", '
     'autoscaling.knative.dev/panic-threshold-percentage: "300", '
     'autoscaling.knative.dev/scale-to-zero-pod-retention-period: "1m"',
     ScalePolicy(min_replicas=1, max_replicas=1, target=100.0, stable_window=20,
                 panic_window=2, panic_threshold=3, scale_to_zero_grace=60)),
    ('autoscaling.knative.dev/minScale: "2"', ScalePolicy(min_replicas=2, max_replicas=2,
                                                          target=100.0)),
])
def test_knative_annotations_map_onto_the_autoscaler(annotations, want) -> None:
    assert scale_policy(isvc("a", annotations=annotations)) == want


def test_unused_knative_annotations_are_named() -> None:
    manifest = isvc("a", annotations='autoscaling.knative.dev/class: hpa.autoscaling.knative.dev')
    assert knative_ignored(manifest) == ["autoscaling.knative.dev/class"]


@pytest.mark.parametrize("fmt, runtime, want", [
    ("sklearn", None, "sklearn"), ("pytorch", None, "torch"), ("xgboost", "kserve-mlserver",
                                                                "xgboost"),
    ("lightgbm", "kserve-lgbserver", "lightgbm"), ("onnx", "onnx", "onnx"),
    ("tensorflow", "kserve-tensorflow-serving", "tensorflow"),
    ("triton", None, "no Turnout runtime"), ("huggingface", None, "no Turnout runtime"),
    ("sklearn", "kserve-xgbserver", "serves xgboost, not"),
    ("sklearn", "xgboost", "does not serve"), ("pytorch", "kserve-torchserve", "no Turnout"),
    ("sklearn", "my-runtime", "unknown"),
])
def test_model_format_and_runtime_select_a_runtime(fmt, runtime, want) -> None:
    if want in ("sklearn", "torch", "xgboost", "lightgbm", "onnx", "tensorflow"):
        assert runtime_for(fmt, runtime) == want
    else:
        with pytest.raises(FormatError, match=want):
            runtime_for(fmt, runtime)


def test_validation_reports_every_problem_as_where_what() -> None:
    graphs = load_texts([(Path("g.yaml"), """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: pick}
spec:
  nodes:
    root:
      routerType: Switch
      steps: [{serviceName: iris}, {serviceName: iris, condition: "x ==="}]
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: chain}
spec:
  nodes:
    root: {routerType: Sequence, steps: [{serviceName: nowhere}]}
""")]).graphs
    found = problems({"iris": isvc("a", fmt="pmml"),
                      "bad": isvc("a", name="bad",
                                  annotations='autoscaling.knative.dev/max-scale: "x"')},
                     {g.name: g for g in graphs})
    assert any(p.startswith("InferenceService iris: spec.predictor.model: modelFormat 'pmml'")
               for p in found), found
    assert any(p.startswith("InferenceService bad: metadata.annotations: annotation "
                            "autoscaling.knative.dev/max-scale") for p in found), found
    assert any(p.startswith("InferenceGraph pick: spec.") for p in found), found
    assert any(p.startswith("InferenceGraph chain: spec.nodes:") and "nowhere" in p
               for p in found), found
    assert problems({"iris": isvc("a")}, {}) == []


def test_promote_records_the_previous_revision() -> None:
    s = apply_manifest(apply_manifest(None, isvc("a"), now=1), isvc("b", 10), now=2)
    assert promote(s, now=3, reason="cli").previous == "iris-00001"


def test_fields_accepted_but_not_acted_on_are_warnings_naming_them() -> None:
    from serving.control.policy.validate import warnings

    manifest = load_texts([(Path("m.yaml"), """
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  annotations:
    serving.kserve.io/deploymentMode: RawDeployment
    serving.kserve.io/enable-tag-routing: "true"
    autoscaling.knative.dev/class: kpa.autoscaling.knative.dev
    autoscaling.knative.dev/target: "10"
spec:
  predictor:
    serviceAccountName: sa
    deploymentStrategy: {type: RollingUpdate}
    model:
      modelFormat: {name: sklearn, version: "1"}
      protocolVersion: grpc-v1
      resources: {limits: {cpu: "1"}}
      storageUri: gs://models/iris
""")])
    notes = "\n".join(manifest.warnings + warnings(manifest.services))
    for field in ("spec.predictor.serviceAccountName", "spec.predictor.deploymentStrategy",
                  "spec.predictor.model.modelFormat.version", "spec.predictor.model.resources",
                  "spec.predictor.model.protocolVersion grpc-v1",
                  "metadata.annotations.serving.kserve.io/deploymentMode",
                  "metadata.annotations.autoscaling.knative.dev/class"):
        assert field in notes, (field, notes)
    # acted on: never warned about
    assert "enable-tag-routing" not in notes and "knative.dev/target" not in notes
