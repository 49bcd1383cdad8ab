"""Transformers in the pure plan, as tables: the manifest forms, revisions, workloads, routes."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.control.policy.plan import Observed, plan
from serving.control.policy.revisions import apply_manifest, digest
from serving.control.policy.routes import Endpoints
from serving.spec import load_texts
from serving.spec.load import ManifestError

TURNOUT_FORM = "{turnout: {modelClass: 'transformer:CsvToIris', storageUri: ./tr, protocol: grpc-v2}}"
CONTAINER_FORM = ("{containers: [{name: kserve-container, image: me/transformer:1, "
                  "args: [--model_name, iris, '--protocol=v1']}]}")


def isvc(uri: str = "gs://m/v1", transformer: str | None = TURNOUT_FORM,
         percent: int | None = None):
    canary = f"\n    canaryTrafficPercent: {percent}" if percent is not None else ""
    extra = f"\n  transformer: {transformer}" if transformer else ""
    return load_texts([(Path("m.yaml"), f"""
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {{name: iris}}
spec:
  predictor:{canary}
    model: {{modelFormat: {{name: sklearn}}, storageUri: {uri}}}{extra}
""")]).services[0]


P1, P2 = Endpoints(["http://p1"], ["p1:1"]), Endpoints(["http://p2"], ["p2:1"])
T1, T2 = Endpoints(["http://t1"], ["t1:1"]), Endpoints(["http://t2"], ["t2:1"])


@pytest.mark.parametrize("form, model_class, protocol, container_image", [
    (TURNOUT_FORM, "transformer:CsvToIris", "grpc-v2", None),
    (CONTAINER_FORM, None, "v1", "me/transformer:1"),
    ("{turnout: {modelClass: 'a:B', storageUri: ./t}, containers: [{image: x, "
     "args: [--protocol, grpc-v2]}]}", "a:B", "grpc-v2", "x"),       # args give the protocol
    ("{turnout: {modelClass: 'a:B', storageUri: ./t}}", "a:B", "v2", None),  # default v2
])
def test_the_revision_records_its_transformer(form: str, model_class: str | None, protocol: str,
                                              container_image: str | None) -> None:
    state = apply_manifest(None, isvc(transformer=form), now=1, transformer_uri="/abs/tr")
    transformer = state.revisions["iris-00001"].transformer
    assert transformer is not None
    assert (transformer.model_class, transformer.protocol) == (model_class, protocol)
    assert (transformer.container or {}).get("image") == container_image
    assert transformer.resolved_uri == ("/abs/tr" if model_class else "")


@pytest.mark.parametrize("form, problem", [
    ("{}", "transformer needs containers"),
    ("{turnout: {modelClass: 'no-colon', storageUri: ./t}}", "modelClass"),
    ("{turnout: {modelClass: 'a:B'}}", "storageUri"),
    ("{turnout: {modelClass: 'a:B', storageUri: ./t, protocol: grpc-v1}}", "protocol"),
])
def test_bad_transformers_are_refused_naming_the_field(form: str, problem: str) -> None:
    with pytest.raises(ManifestError, match=problem):
        isvc(transformer=form)


def test_a_changed_transformer_is_a_new_revision_and_a_canary_gets_its_own() -> None:
    assert digest(isvc(transformer=None)) == digest(isvc(transformer=None))
    assert digest(isvc()) != digest(isvc(transformer=None))
    s = apply_manifest(None, isvc(), now=1, transformer_uri="/abs/tr")
    other = TURNOUT_FORM.replace("CsvToIris", "Other")
    s = apply_manifest(s, isvc(transformer=other, percent=20), now=2, transformer_uri="/abs/tr")
    assert (s.stable, s.canary, s.percent) == ("iris-00001", "iris-00002", 20)
    assert s.revisions["iris-00001"].transformer.model_class == "transformer:CsvToIris"
    assert s.revisions["iris-00002"].transformer.model_class == "transformer:Other"
    desired = plan(services=[(isvc(transformer=other, percent=20), s)], graphs=[],
                   observed=Observed(endpoints={"iris-00001": P1, "iris-00002": P2,
                                                "iris-00001-transformer": T1,
                                                "iris-00002-transformer": T2}))
    assert {r: (t.name, t.transformer.model_class) for r, t in desired.transformers.items()} == {
        "iris-00001": ("iris-00001-transformer", "transformer:CsvToIris"),
        "iris-00002": ("iris-00002-transformer", "transformer:Other")}
    variants = {v.name: (v.weight, v.http, v.grpc) for v in desired.routes.services[0].variants}
    assert variants == {"stable": (80, T1.http, T1.grpc), "canary": (20, T2.http, T2.grpc)}


@pytest.mark.parametrize("endpoints, routed_to, omitted", [
    ({"iris-00001": P1, "iris-00001-transformer": T1}, T1, []),            # both ready
    ({"iris-00001": P1}, Endpoints(), []),                                # transformer starting
    ({"iris-00001-transformer": T1}, Endpoints(), []),                    # predictor starting
])
def test_traffic_goes_to_the_transformer_once_it_and_its_predictor_are_ready(
        endpoints: dict, routed_to: Endpoints, omitted: list) -> None:
    s = apply_manifest(None, isvc(), now=1, transformer_uri="/abs/tr")
    desired = plan(services=[(isvc(), s)], graphs=[], observed=Observed(endpoints=endpoints))
    (service,) = desired.routes.services
    (variant,) = service.variants
    # with nothing routable the service is listed without endpoints: the router holds requests
    assert (variant.http, variant.grpc) == (routed_to.http, routed_to.grpc)
    assert desired.omitted == omitted
    workload = desired.transformers["iris-00001"]
    assert (workload.model_name, workload.replicas, workload.runs_locally) == ("iris", 1, True)
    assert workload.replicas == desired.workloads["iris-00001"].replicas


@pytest.mark.parametrize("run_images, transformers, routed_to", [
    (False, set(), P1),                # turnout up: an image cannot run; the predictor serves
    (True, {"iris-00001"}, T1),        # a cluster runs KServe's container
])
def test_container_only_transformers_run_only_where_images_do(
        run_images: bool, transformers: set, routed_to: Endpoints) -> None:
    s = apply_manifest(None, isvc(transformer=CONTAINER_FORM), now=1)
    desired = plan(services=[(isvc(transformer=CONTAINER_FORM), s)], graphs=[],
                   observed=Observed(endpoints={"iris-00001": P1, "iris-00001-transformer": T1}),
                   run_images=run_images)
    assert set(desired.transformers) == transformers
    assert desired.routes.services[0].variants[0].http == routed_to.http


def test_without_a_transformer_the_plan_is_unchanged() -> None:
    s = apply_manifest(None, isvc(transformer=None), now=1)
    desired = plan(services=[(isvc(transformer=None), s)], graphs=[],
                   observed=Observed(endpoints={"iris-00001": P1}))
    assert desired.transformers == {}
    assert desired.routes.services[0].variants[0].http == P1.http
    assert s.revisions["iris-00001"].transformer is None


def test_the_state_with_a_transformer_round_trips_through_json() -> None:
    s = apply_manifest(None, isvc(), now=1, transformer_uri="/abs/tr")
    again = type(s).model_validate_json(s.model_dump_json())
    assert again == s
    assert again.revisions["iris-00001"].transformer.resolved_uri == "/abs/tr"


@pytest.mark.parametrize("form, ready, run_images, serving", [
    (None, {"r"}, True, True),                              # no transformer: the predictor's
    (TURNOUT_FORM, {"r"}, True, False),                     # transformer still starting
    (TURNOUT_FORM, {"r", "r-transformer"}, True, True),
    (TURNOUT_FORM, {"r-transformer"}, True, False),         # predictor still starting
    (CONTAINER_FORM, {"r"}, False, True),                   # turnout up runs no image
    (CONTAINER_FORM, {"r"}, True, False),                   # a cluster does: wait for it
])
def test_a_revision_serves_when_its_predictor_and_transformer_are_ready(
        form: str | None, ready: set, run_images: bool, serving: bool) -> None:
    from serving.control.policy.transformers import serving_ready, transformer_revision

    transformer = transformer_revision(isvc(transformer=form)) if form else None
    assert serving_ready("r", transformer, ready, run_images=run_images) is serving


@pytest.mark.parametrize("manifest", ["inferenceservice.yaml", "digits.yaml"])
def test_the_examples_are_valid_and_their_classes_are_where_they_say(manifest: str) -> None:
    from serving.control.local.checks import transformer_problems
    from serving.spec.load import load_files

    path = Path(__file__).resolve().parents[2] / "examples" / "transformer" / manifest
    loaded = load_files([path])
    (service,) = loaded.services
    assert loaded.warnings == []  # no unknown field, nothing ignored locally
    assert transformer_problems(service, path.parent, (path.parent,)) == []
