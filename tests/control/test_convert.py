"""``turnout convert``: KServe manifests into Turnout's group, losslessly; ``turnout crds``; and
``turnout up`` reading Turnout-group documents."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.cli import main
from serving.spec import ANNOTATION, ManifestError, load_texts
from serving.spec.convert import CLUSTER_SET, ConvertError, convert_texts
from serving.spec.crd import crds, render_all, spec_schema
from tests.control.crdschema import errors, prune

EXAMPLES = Path(__file__).parents[2] / "examples"
TURNOUT = "serving.turnout.dev/v1alpha1"
KSERVE_KINDS = {("serving.kserve.io/v1beta1", "InferenceService"),
                ("serving.kserve.io/v1alpha1", "InferenceGraph")}


def kserve_examples() -> list[Path]:
    """Every example file holding KServe InferenceService/InferenceGraph documents."""
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if docs and all((d.get("apiVersion"), d.get("kind")) in KSERVE_KINDS for d in docs):
            found.append(path)
    return found


def comparable(item: Any) -> dict[str, Any]:
    """A loaded model as data, without what conversion is meant to change."""
    data = item.model_dump(mode="json")
    data.pop("apiVersion")
    data.pop("status")
    meta = data["metadata"]
    for key in CLUSTER_SET:
        meta.pop(key, None)
    meta["annotations"].pop(ANNOTATION, None)
    return data


def loaded(path: str, text: str) -> list[dict[str, Any]]:
    manifests = load_texts([(Path(path), text)])
    return [comparable(m) for m in [*manifests.services, *manifests.graphs]]


def test_the_examples_are_found() -> None:
    assert {p.name for p in kserve_examples()} >= {"inferenceservice.yaml", "shadow-rollout.yaml"}


@pytest.mark.parametrize("path", kserve_examples(), ids=lambda p: p.name)
def test_every_example_converts_validates_and_loads_the_same(path: Path) -> None:
    text = path.read_text()
    converted = convert_texts([(path.name, text)])
    originals = [d for d in yaml.safe_load_all(text) if d is not None]
    assert len(converted.documents) == len(originals) and converted.warnings == []
    for original, doc in zip(originals, converted.documents, strict=True):
        assert doc["apiVersion"] == TURNOUT and doc["kind"] == original["kind"]
        assert {k: v for k, v in doc.items() if k != "apiVersion"} == \
            {k: v for k, v in original.items() if k != "apiVersion"}
        schema = spec_schema(doc["kind"])
        assert errors(doc, schema) == []
        assert prune(doc, schema) == doc, "the API server would drop part of it"
    out = converted.text()
    assert loaded(path.name, out) == loaded(path.name, text)
    assert convert_texts([("again.yaml", out)]).text() == out  # idempotent


CLUSTER_COPY = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  namespace: models
  labels: {team: a}
  annotations:
    serving.kserve.io/deploymentMode: Serverless
    serving.turnout.dev/spec: |
      rules: [{header: {x-exp: b}, variant: canary}]
      rollout: {steps: [20, 100], interval: 30s, analysis: {maxP99Seconds: 0.25}}
  uid: 6f1d0b1e-0000-4000-8000-000000000001
  resourceVersion: "12345"
  generation: 4
  creationTimestamp: "2024-05-01T10:00:00Z"
  selfLink: /apis/serving.kserve.io/v1beta1/namespaces/models/inferenceservices/iris
  managedFields: [{manager: kubectl, operation: Update}]
  finalizers: [inferenceservice.finalizers]
spec:
  predictor:
    minReplicas: 1
    minReplica: 3
    canaryTrafficPercent: 20
    model:
      modelFormat: {name: sklearn}
      storageUri: gs://bucket/iris
      resources: {limits: {cpu: "1"}}
  explainer: {containers: [{name: e, image: x}]}
status:
  url: http://iris.models.example.com
  conditions: [{type: Ready, status: "True"}]
"""


def test_a_cluster_copy_loses_only_what_the_cluster_set() -> None:
    converted = convert_texts([("copy.yaml", CLUSTER_COPY)])
    (doc,) = converted.documents
    assert doc == {
        "apiVersion": TURNOUT,
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "models", "labels": {"team": "a"},
                     "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
                     "finalizers": ["inferenceservice.finalizers"]},
        "spec": {
            "predictor": {"minReplicas": 1, "minReplica": 3, "canaryTrafficPercent": 20,
                          "model": {"modelFormat": {"name": "sklearn"},
                                    "storageUri": "gs://bucket/iris",
                                    "resources": {"limits": {"cpu": "1"}}}},
            "explainer": {"containers": [{"name": "e", "image": "x"}]},
            "turnout": {"rules": [{"header": {"x-exp": "b"}, "variant": "canary"}],
                        "rollout": {"steps": [20, 100], "interval": "30s",
                                    "analysis": {"maxP99Seconds": "0.25"}}}},
    }
    assert converted.warnings == [
        "copy.yaml[0] (InferenceService iris): spec.turnout.rollout.analysis.maxP99Seconds: "
        "0.25 written as the string '0.25' (the CRD takes whole seconds or a duration string)",
        "copy.yaml[0] (InferenceService iris): spec.predictor.minReplica is not in the "
        "InferenceService CRD's schema: kept, but an API server prunes it"]
    assert loaded("copy.yaml", converted.text()) == loaded("copy.yaml", CLUSTER_COPY)
    assert errors(doc, spec_schema("InferenceService")) == []
    assert convert_texts([("again.yaml", converted.text())]).documents == [doc]


GRAPH = """\
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: chain
  annotations: {serving.turnout.dev/spec: "kept: as written"}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - {stepName: first, serviceName: iris}
        - {stepName: pick, nodeName: pick, data: $response}
    pick:
      routerType: Switch
      steps:
        - {serviceName: iris, condition: "instances.#(0>1)"}
        - {serviceName: iris-cold}
  timeout: 30
"""

TURNOUT_DOC = f"""\
apiVersion: {TURNOUT}
kind: InferenceService
metadata: {{name: already}}
spec:
  predictor: {{sklearn: {{storageUri: gs://b/m}}}}
  turnout: {{autoscaling: {{stableWindow: 30s}}}}
"""


def test_graphs_convert_and_turnout_documents_pass_through_in_order() -> None:
    text = f"---\n{TURNOUT_DOC}---\n---\n{GRAPH}---\n{CLUSTER_COPY}"
    converted = convert_texts([("a.yaml", text), ("b.yaml", TURNOUT_DOC)])
    kinds = [(d["kind"], d["metadata"]["name"]) for d in converted.documents]
    assert kinds == [("InferenceService", "already"), ("InferenceGraph", "chain"),
                     ("InferenceService", "iris"), ("InferenceService", "already")]
    already, chain = converted.documents[0], converted.documents[1]
    assert already == yaml.safe_load(TURNOUT_DOC)
    assert chain == {**yaml.safe_load(GRAPH), "apiVersion": TURNOUT}  # a graph's annotation stays
    assert errors(chain, spec_schema("InferenceGraph")) == []
    assert loaded("g.yaml", converted.text())[-1] == loaded("g.yaml", GRAPH)[0]  # graphs last


@pytest.mark.parametrize("text, message", [
    (CLUSTER_COPY.replace("canaryTrafficPercent: 20", "canaryTrafficPercent: 120"),
     "in.yaml[1] (InferenceService iris): spec.predictor.canaryTrafficPercent: Input should be "
     "less than or equal to 100"),
    (CLUSTER_COPY.replace("      storageUri: gs://bucket/iris\n", ""),
     "spec.predictor: Value error, predictor.model.storageUri is required"),
    (CLUSTER_COPY.replace("variant: canary", "variant: blue"),
     "in.yaml[1] (InferenceService iris): spec.turnout.rules[0].variant"),
    (CLUSTER_COPY.replace("spec:\n  predictor:", "spec:\n  turnout: {}\n  predictor:"),
     "in.yaml[1]: give Turnout's block either as spec.turnout or as the "
     "serving.turnout.dev/spec annotation, not both"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
     "in.yaml[1]: apiVersion/kind v1/ConfigMap is not supported"),
    ("a: [1", "in.yaml: not valid YAML"),
])
def test_invalid_input_names_the_document_and_field(text: str, message: str) -> None:
    with pytest.raises(ConvertError) as info:
        convert_texts([("in.yaml", f"{TURNOUT_DOC}---\n{text}")])
    assert message in str(info.value)


# --- the command line -----------------------------------------------------------------------

def test_convert_prints_the_documents(tmp_path: Path, capsys) -> None:
    source = tmp_path / "kserve.yaml"
    source.write_text(CLUSTER_COPY)
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH)
    assert main(["convert", "-f", str(source), "-f", str(graph)]) == 0
    out, err = capsys.readouterr()
    assert list(yaml.safe_load_all(out)) == \
        convert_texts([(source, CLUSTER_COPY), (graph, GRAPH)]).documents
    assert "warning: " in err and "spec.predictor.minReplica is not in the" in err
    assert out.index("apiVersion") < out.index("kind") < out.index("metadata") < out.index("spec")


def test_convert_writes_a_file_and_reads_stdin(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GRAPH))
    target = tmp_path / "out.yaml"
    assert main(["convert", "-f", "-", "-o", str(target)]) == 0
    assert capsys.readouterr().out == ""
    (doc,) = yaml.safe_load_all(target.read_text())
    assert doc["apiVersion"] == TURNOUT and doc["spec"]["nodes"]["pick"]["routerType"] == "Switch"


def test_convert_refuses_invalid_input_with_exit_2_and_no_traceback(tmp_path: Path,
                                                                    capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GRAPH + "---\n" + CLUSTER_COPY.replace("minReplicas: 1", "minReplicas: -1"))
    target = tmp_path / "out.yaml"
    assert main(["convert", "-f", str(bad), "-o", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and not target.exists()
    assert err.startswith("turnout convert: invalid manifests:\n")
    assert f"{bad}[1] (InferenceService iris): spec.predictor.minReplicas: Input should be " \
           "greater than or equal to 0" in err
    assert "Traceback" not in err
    assert main(["convert", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read: No such file or directory" in capsys.readouterr().err


def test_crds_prints_what_kubectl_apply_takes(capsys) -> None:
    assert main(["crds"]) == 0
    out = capsys.readouterr().out
    assert out == render_all()
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(out)] == \
        ["inferenceservices.serving.turnout.dev", "inferencegraphs.serving.turnout.dev"]
    assert list(yaml.safe_load_all(out)) == crds()


# --- turnout up reads Turnout's group -------------------------------------------------------

def test_turnout_up_loads_turnout_group_documents_as_the_same_models() -> None:
    converted = convert_texts([("c.yaml", CLUSTER_COPY), ("g.yaml", GRAPH)]).text()
    manifests = load_texts([(Path("c.yaml"), converted)])
    (isvc,), (graph,) = manifests.services, manifests.graphs
    assert isvc.apiVersion == graph.apiVersion == TURNOUT
    assert isvc.spec.turnout.rollout.steps == [20, 100]
    assert isvc.spec.turnout.rollout.analysis.maxP99Seconds == 0.25
    assert isvc.spec.predictor.resolved().storageUri == "gs://bucket/iris"
    assert graph.spec.nodes["root"].steps[1].nodeName == "pick"
    assert any("spec.predictor.minReplica is ignored" in w for w in manifests.warnings)


def test_a_turnout_group_kind_mismatch_is_refused() -> None:
    with pytest.raises(ManifestError, match="serving.turnout.dev/v1beta1/InferenceService is not "
                                            "supported"):
        load_texts([(Path("m.yaml"), TURNOUT_DOC.replace("v1alpha1", "v1beta1"))])
