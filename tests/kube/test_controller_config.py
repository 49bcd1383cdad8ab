"""The controller reads the chart's config.yaml: the images, router and KEDA settings the chart
renders are the ones the controller writes into what it creates."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from serving.control.kube.config import ConfigError, load
from serving.control.kube.render import Settings

ROOT = Path(__file__).resolve().parents[2]


def _rendered_config(tmp_path: Path) -> Path:
    """config.yaml exactly as `helm template` renders it from the chart's default values."""
    tools = subprocess.run(["bash", str(ROOT / "scripts" / "k8s" / "tools.sh")],
                           capture_output=True, text=True, timeout=600)
    assert tools.returncode == 0, tools.stderr
    helm = Path(tools.stdout.strip().splitlines()[-1]) / "helm"
    done = subprocess.run([str(helm), "template", "t", str(ROOT / "charts" / "turnout"),
                           "--set", "runtime.images.torch.tag=9.9",
                           "--set", "keda.prometheusUrl=http://prom.example:9090",
                           "--set", "runtime.modelServer.trustedSources[0]=s3://models/"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    maps = [d for d in yaml.safe_load_all(done.stdout)
            if d and d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})]
    assert len(maps) == 1
    path = tmp_path / "config.yaml"
    path.write_text(maps[0]["data"]["config.yaml"])
    return path


def test_the_charts_config_reaches_the_controllers_settings(tmp_path: Path) -> None:
    settings = load(_rendered_config(tmp_path), Settings(namespace="ns"))
    assert settings.image_for("torch").endswith("turnout/server-torch:9.9")
    assert "server-sklearn" in settings.image_for("xgboost")  # runtime -> family -> image
    assert settings.image_for("python") == settings.images["all"]
    assert settings.router_image and "router" in settings.router_image
    assert settings.prometheus_url == "http://prom.example:9090"
    values = yaml.safe_load((ROOT / "charts" / "turnout" / "values.yaml").read_text())
    assert settings.server_resources == values["runtime"]["modelServer"]["resources"]
    assert settings.router_resources == values["runtime"]["router"]["resources"]
    assert settings.router_service_type == values["runtime"]["router"]["serviceType"]
    assert settings.trusted_sources == ("s3://models/",)


def test_default_resources_apply_unless_the_inferenceservice_sets_its_own() -> None:
    from serving.control.kube.render import Owner, predictor_deployment
    from serving.control.policy.plan import Observed, plan
    from serving.control.policy.revisions import apply_manifest
    from serving.spec import load_texts

    text = """
apiVersion: serving.turnout.dev/v1alpha1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    model: {modelFormat: {name: sklearn}, storageUri: "s3://m/iris"%s}
"""
    defaults = {"requests": {"cpu": "500m"}}
    settings = Settings(namespace="ns", server_resources=defaults,
                        image_pull_secrets=({"name": "registry"},))
    for extra, want in (("", defaults),
                        (", resources: {requests: {cpu: '2'}}", {"requests": {"cpu": "2"}})):
        isvc = load_texts([(Path("m.yaml"), text % extra)]).services[0]
        state = apply_manifest(None, isvc, now=1)
        workload = plan(services=[(isvc, state)], graphs=[], observed=Observed()).workloads[
            "iris-00001"]
        pod = predictor_deployment(workload, isvc, Owner("iris", "uid"), settings)[
            "spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"] == want
        assert pod["imagePullSecrets"] == [{"name": "registry"}]
    trusting = Settings(namespace="ns", trusted_sources=("s3://m/",))
    args = predictor_deployment(workload, isvc, Owner("iris", "uid"), trusting)[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-3:-1] == ["--trusted-source", "s3://m/"]  # the server may load the pickle


def test_a_config_that_cannot_be_used_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("images: {sklearn: a}\nruntimes: {torch: gpu}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: runtimes: families \['gpu'\]"):
        load(bad, Settings(namespace="ns"))
    bad.write_text("router: [1, 2]\n")
    with pytest.raises(ConfigError, match="router must be a mapping"):
        load(bad, Settings(namespace="ns"))


def test_without_a_config_one_image_serves_everything() -> None:
    settings = Settings(namespace="ns", image="registry/turnout:1")
    assert settings.image_for("torch") == "registry/turnout:1"
