"""The example pipeline run locally end to end (kfp.local, every task a subprocess), against the
SQLite registry in one temporary state folder shared by the module: scikit-learn, XGBoost
(regression, a lower-is-better gate) and torch; the metric gate closing; ``turnout pipeline
run`` through its ``main``."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("mlflow")

from upstream.datasets import load_dataset  # noqa: E402
from upstream.pipelines import cli, runner  # noqa: E402
from upstream.registry import Registry, RegistryError  # noqa: E402
from upstream.training import predict_in_process  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipelines" / "train_register_deploy.py"
ENV_URIS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TURNOUT_PIPELINE_IMAGE")
TASKS = ["train-model", "evaluate-model", "register-model", "deploy-model"]

CASES: dict[str, dict[str, Any]] = {
    "sklearn": {"framework": "sklearn", "dataset": "iris", "model_name": "iris-sklearn",
                "threshold": 0.8},
    "xgboost": {"framework": "xgboost", "dataset": "diabetes", "model_name": "diabetes-xgb",
                "hyperparameters": '{"n_estimators": 20, "max_depth": 2}', "metric": "rmse",
                "threshold": 80.0, "higher_is_better": False, "alias": "production"},
    "torch": {"framework": "torch", "dataset": "wine", "model_name": "wine-torch",
              "hyperparameters": '{"epochs": 5, "hidden": 8}', "metric": "f1_macro",
              "threshold": 0.5, "seed": 3},
}


@dataclass
class Setting:
    state: Path     # the registry: SQLite in <state>/registry.db; a plane's state folder
    root: Path      # pipeline runs
    registry: Registry
    pipeline: Any
    runs: dict[str, tuple[runner.RunResult, list[tuple[str, str]]]]


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_URIS:  # tasks inherit the environment: no registry but ours
            patch.delenv(name, raising=False)
        base = tmp_path_factory.mktemp("pipelines")
        # .turnout: where a `turnout up` started in `base` keeps its state and finds the registry
        yield Setting(state=base / ".turnout", root=base / "runs",
                      registry=Registry(state_dir=base / ".turnout"),
                      pipeline=runner.load_pipeline(EXAMPLE), runs={})


def run(setting: Setting, **params: Any) -> tuple[runner.RunResult, list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    result = runner.run_pipeline(
        setting.pipeline, {"state_dir": str(setting.state), **params}, root=setting.root,
        on_event=lambda task: events.append((task.name, task.state)))
    return result, events


def ran(setting: Setting, case: str) -> tuple[runner.RunResult, list[tuple[str, str]]]:
    """Each case runs once per module; the gate test reuses the scikit-learn one."""
    if case not in setting.runs:
        setting.runs[case] = run(setting, **CASES[case])
    return setting.runs[case]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_train_gate_register_deploy(setting: Setting, case: str) -> None:
    params = CASES[case]
    result, events = ran(setting, case)
    assert result.succeeded, result.error
    assert events == [(t, s) for t in TASKS for s in ("running", "succeeded")]
    assert result.run_dir is not None and result.run_dir.parent == setting.root.absolute()
    tasks = result.tasks
    assert tasks["evaluate-model"].outputs["passed"] == "True"
    version = tasks["register-model"].outputs["version"]
    alias = params.get("alias", "champion")
    name = params["model_name"]
    assert tasks["register-model"].outputs["uri"] == f"models:/{name}/{version}"
    assert tasks["deploy-model"].outputs["uri"] == f"models:/{name}@{alias}"
    assert tasks["deploy-model"].outputs["refreshed"] == "False"
    for task in TASKS:
        assert tasks[task].log == result.run_dir / "logs" / f"{task}.log"
        assert tasks[task].log.is_file()

    trained = result.run_dir / "train-model" / "model"
    metrics = json.loads((trained / "metrics.json").read_text())
    settings = yaml.safe_load((trained / "model-settings.yaml").read_text())
    assert float(tasks["evaluate-model"].outputs["value"]) == metrics[params["metric"]
                                                                      if "metric" in params
                                                                      else "accuracy"]

    # The registry: the version the alias names now, with what training measured and wrote.
    registered = setting.registry.resolve(f"models:/{name}@{alias}")
    assert registered.version == version
    assert [v.version for v in setting.registry.versions(name)][0] == version
    assert registered.metrics == metrics
    assert registered.framework == params["framework"]
    assert registered.signature == {"inputs": settings["inputs"], "outputs": settings["outputs"]}
    assert registered.lineage == {
        "pipeline": "train-register-deploy", "pipeline_run": result.run_dir.name,
        "pipeline_run_id": registered.lineage["pipeline_run_id"],
        "pipeline_task": "register-model", "dataset": params["dataset"],
        "seed": str(params.get("seed", 0)), "shuffle_labels": "False"}
    assert registered.lineage["pipeline_run_id"].isdigit()  # kfp.local's run id

    # Its files are the trained folder's, file for file, and predict exactly the same.
    fetched = Path(setting.registry.fetch(registered))
    assert files(fetched) == files(trained)
    x = load_dataset(params["dataset"], seed=params.get("seed", 0)).X_test
    want, got = predict_in_process(trained, x), predict_in_process(fetched, x)
    assert sorted(got) == sorted(want)
    for output, values in want.items():
        assert np.array_equal(got[output], values), output
    label = "predict"
    if params["framework"] != "xgboost":  # classifiers: class labels
        assert got[label].dtype.kind in "iu" and set(np.unique(got[label])) <= {0, 1, 2}


def test_a_closed_gate_registers_nothing(setting: Setting) -> None:
    first, _ = ran(setting, "sklearn")
    name = CASES["sklearn"]["model_name"]
    before = [v.version for v in setting.registry.versions(name)]
    champion = setting.registry.resolve(f"models:/{name}@champion").version

    result, events = run(setting, **{**CASES["sklearn"], "threshold": 1.01})
    assert result.succeeded, result.error
    assert events == [("train-model", "running"), ("train-model", "succeeded"),
                      ("evaluate-model", "running"), ("evaluate-model", "succeeded"),
                      ("register-model", "skipped"), ("deploy-model", "skipped")]
    assert result.tasks["evaluate-model"].outputs["passed"] == "False"
    assert result.tasks["register-model"].reason == "metric-gate is false"
    assert [v.version for v in setting.registry.versions(name)] == before
    assert setting.registry.resolve(f"models:/{name}@champion").version == champion
    assert not (result.run_dir / "register-model").exists()

    # A model name the registry has never seen stays unknown.
    result, _ = run(setting, **{**CASES["sklearn"], "model_name": "never-registered",
                                "threshold": 1.01})
    assert result.succeeded
    with pytest.raises(RegistryError):
        setting.registry.versions("never-registered")


def turnout(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    parser = argparse.ArgumentParser(prog="turnout")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    code = cli.main(parser.parse_args(["pipeline", *argv]))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_cli_run_prints_a_line_per_task(setting: Setting, capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    code, out, err = turnout(
        capsys, "run", str(EXAMPLE), "--root", str(tmp_path), "-p", f"state_dir={setting.state}",
        "-p", "model_name=cli-iris", "-p", "service=fraud", "--param", "alias=staging")
    assert code == 0, err
    assert err == []
    assert out[0] == f"pipeline train-register-deploy: running locally, outputs under {tmp_path}"
    width = len("register-model")
    assert out[1] == "train-model".ljust(width) + "  started"
    assert out[2].startswith("train-model".ljust(width) + "  succeeded in ")
    assert out[4].startswith("evaluate-model  succeeded in ")
    assert out[4].endswith("s (passed=True, value=1.0)")
    assert out[6].startswith("register-model  succeeded in ")
    assert out[6].endswith("s (uri=models:/cli-iris/1, version=1)")
    # No plane runs in the state folder: reported by the deploy step, not a failure.
    assert out[8].startswith("deploy-model    succeeded in ")
    assert "(plane=turnout rollout: no running plane found in " in out[8]
    assert out[8].endswith(", refreshed=False, uri=models:/cli-iris@staging)")
    assert out[9].startswith("pipeline train-register-deploy succeeded in ")
    assert len(out) == 10
    assert setting.registry.resolve("models:/cli-iris@staging").version == "1"
    run_dir = Path(out[9].rsplit("(run folder ", 1)[1].rstrip(")"))
    log = (run_dir / "logs" / "deploy-model.log").read_text()
    assert "plane not refreshed: turnout rollout: no running plane found" in log


def test_cli_run_verbose_closed_gate(setting: Setting, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    code, out, err = turnout(
        capsys, "run", str(EXAMPLE), "--root", str(tmp_path), "-v", "-p",
        f"state_dir={setting.state}", "-p", "model_name=cli-shuffled", "-p", "shuffle_labels=true")
    assert code == 0, err
    progress = [line for line in out if not line.startswith(" ") and line.strip()
                and not line.startswith(("-", "{", "}"))]
    assert "register-model  skipped (metric-gate is false)" in progress
    assert "deploy-model    skipped (metric-gate is false)" in progress
    assert any(line.strip().startswith("gate failed: accuracy ") for line in out)  # task output
    with pytest.raises(RegistryError):
        setting.registry.versions("cli-shuffled")


def test_cli_run_failed_task_exits_1(setting: Setting, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    code, out, err = turnout(capsys, "run", str(EXAMPLE), "--root", str(tmp_path), "-p",
                             f"state_dir={setting.state}", "-p", "dataset=no-such-data")
    assert code == 1
    why = "ValueError: unknown dataset 'no-such-data'"
    assert out[2].startswith("train-model     failed in ")
    assert why in out[2]
    assert out[3:] == ["evaluate-model  skipped (train-model failed)",
                       "register-model  skipped (train-model failed)",
                       "deploy-model    skipped (train-model failed)"]
    assert len(err) == 1
    assert err[0].startswith(f"pipeline train-register-deploy failed: task train-model failed: "
                             f"{why}")
    log = Path(err[0].rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.name == "train-model.log" and "Traceback" in log.read_text()
    assert "Traceback" not in "\n".join(out + err)


def test_deploy_refreshes_a_running_plane(setting: Setting) -> None:
    """The deploy step asks a running ``turnout up`` (polling off) to check its alias: the
    plane serves the new version, which answers as the trained folder does."""
    import httpx

    from tests.control.planes import Up, isvc

    first, _ = ran(setting, "sklearn")
    v1 = setting.registry.register(first.run_dir / "train-model" / "model", "served-iris",
                                   framework="sklearn", alias="champion")
    plane = Up(setting.state.parent, isvc("iris", "models:/served-iris@champion"),
               args=("--registry-poll", "0"))
    try:
        plane.wait(lambda: plane.infer() == 200, timeout=120, what="iris serving")
        assert plane.status()["variants"][0]["registryVersion"] == f"models:/served-iris/{v1.version}"
        result, events = run(setting, **{**CASES["sklearn"], "model_name": "served-iris",
                                         "service": "iris",
                                         "hyperparameters": '{"estimator": "random_forest", '
                                                            '"n_estimators": 5}'})
        assert result.succeeded, result.error
        deployed = result.tasks["deploy-model"].outputs
        assert deployed["refreshed"] == "True", deployed
        version = result.tasks["register-model"].outputs["version"]
        assert version != v1.version
        want = f"models:/served-iris/{version}"
        plane.wait(lambda: [v["registryVersion"] for v in plane.status()["variants"]] == [want],
                   timeout=120, what=f"iris serving {want} alone")
        x = load_dataset("iris").X_test
        answer = httpx.post(f"{plane.url}/v2/models/iris/infer", timeout=60, json={"inputs": [
            {"name": "input-0", "shape": list(x.shape), "datatype": "FP64",
             "data": x.astype(np.float64).ravel().tolist()}]})
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        expected = predict_in_process(result.run_dir / "train-model" / "model", x)["predict"]
        assert outputs["predict"] == expected.tolist()
    finally:
        assert plane.stop() == 0, (setting.state.parent / "up.log").read_text()[-3000:]
