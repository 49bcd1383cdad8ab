"""Kubeflow pipelines without running a task: the compiled IR of the example pipeline, loading
pipeline files, parameters, the gate and the command line's refusals (exit status 2)."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from upstream.pipelines import cli, runner, steps  # noqa: E402
from upstream.pipelines.components import BASE_IMAGE, DEFAULT_IMAGE  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipelines" / "train_register_deploy.py"
COMPONENT_TASKS = ["train-model", "evaluate-model", "register-model", "deploy-model"]
DEFAULTS = {"framework": "sklearn", "dataset": "iris", "hyperparameters": "{}", "seed": 0,
            "shuffle_labels": False, "metric": "accuracy", "threshold": 0.8,
            "higher_is_better": True, "model_name": "iris", "alias": "champion",
            "tracking_uri": "", "state_dir": "", "service": ""}


def turnout(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``turnout pipeline ARGV`` through add_parser + main, as serving/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="turnout")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    code = cli.main(parser.parse_args(["pipeline", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled") / "nested" / "trd.yaml"
    parser = argparse.ArgumentParser(prog="turnout")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    assert cli.main(parser.parse_args(["pipeline", "compile", str(EXAMPLE), "-o", str(out)])) == 0
    return out


# ---- the compiled pipeline ----------------------------------------------------------------

def test_compiled_yaml_loads_back_with_the_sdk(compiled: Path) -> None:
    from kfp import components

    loaded = components.load_component_from_file(str(compiled))
    assert loaded.name == "train-register-deploy"
    inputs = loaded.component_spec.inputs
    assert list(sorted(inputs)) == sorted(DEFAULTS)
    for name, default in DEFAULTS.items():
        assert inputs[name].default == default, name  # YAML's 0.0 == 0 for seed
    spec = loaded.pipeline_spec
    assert sorted(spec.root.dag.tasks) == ["condition-1", "evaluate-model", "train-model"]
    gate = spec.root.dag.tasks["condition-1"]
    assert gate.task_info.name == "metric-gate"
    assert gate.trigger_policy.condition == \
        "inputs.parameter_values['pipelinechannel--evaluate-model-passed'] == true"
    inner = spec.components[gate.component_ref.name].dag.tasks
    assert sorted(inner) == ["deploy-model", "register-model"]
    assert list(inner["deploy-model"].dependent_tasks) == ["register-model"]


def test_compiled_ir_wires_the_steps(compiled: Path) -> None:
    ir = yaml.safe_load(compiled.read_text())
    tasks = ir["root"]["dag"]["tasks"]
    assert tasks["evaluate-model"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == \
        {"outputArtifactKey": "model", "producerTask": "train-model"}
    assert tasks["condition-1"]["triggerPolicy"]["condition"].startswith(
        "inputs.parameter_values['pipelinechannel--evaluate-model-passed'] == true")
    assert tasks["condition-1"]["inputs"]["parameters"]["pipelinechannel--evaluate-model-passed"] \
        == {"taskOutputParameter": {"outputParameterKey": "passed",
                                    "producerTask": "evaluate-model"}}
    inner = ir["components"]["comp-condition-1"]["dag"]["tasks"]
    register = inner["register-model"]
    constants = {k: v["runtimeValue"]["constant"] for k, v in register["inputs"]["parameters"].items()
                 if "runtimeValue" in v}
    assert constants == {"pipeline_name": "train-register-deploy",
                         "run_name": "{{$.pipeline_job_name}}", "run_id": "{{$.pipeline_job_uuid}}",
                         "task_name": "{{$.pipeline_task_name}}"}
    assert register["cachingOptions"] == {} and inner["deploy-model"]["cachingOptions"] == {}
    assert inner["deploy-model"]["inputs"]["parameters"]["version"]["taskOutputParameter"] == \
        {"outputParameterKey": "version", "producerTask": "register-model"}
    outputs = ir["components"]["comp-evaluate-model"]["outputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in outputs.items()} == \
        {"passed": "BOOLEAN", "value": "NUMBER_DOUBLE"}
    executors = ir["deploymentSpec"]["executors"]
    assert sorted(executors) == [f"exec-{t}" for t in sorted(COMPONENT_TASKS)]
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == BASE_IMAGE == DEFAULT_IMAGE
        assert "pip install" not in " ".join(container["command"])  # install_kfp_package=False


def test_the_image_follows_the_environment_at_import() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from upstream.pipelines import components as c; print(c.BASE_IMAGE)"],
        capture_output=True, text=True, check=True, timeout=60,
        env={**_env(), "TURNOUT_PIPELINE_IMAGE": "registry.local/turnout-pipelines:dev"})
    assert done.stdout.strip() == "registry.local/turnout-pipelines:dev"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "TURNOUT_PIPELINE_IMAGE"}


def test_compile_output(compiled: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = turnout(capsys, "compile", str(EXAMPLE), "-o", str(tmp_path / "p.yaml"))
    assert code == 0 and err == ""
    assert out.strip() == f"compiled pipeline train-register-deploy to {tmp_path / 'p.yaml'}"
    assert (tmp_path / "p.yaml").read_text() == compiled.read_text()


# ---- loading files and parameters ---------------------------------------------------------

TWO_PIPELINES = textwrap.dedent('''
    from kfp import dsl

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def hello(name: str) -> str:
        return f"hello {name}"

    @dsl.pipeline(name="first-one")
    def first(name: str = "a"):
        hello(name=name)

    @dsl.pipeline(name="second-one")
    def second(name: str, times: int, ratio: float = 0.5, flag: bool = False,
               items: list = [], table: dict = {}):  # noqa: B006
        hello(name=name)
''')


@pytest.fixture
def two(tmp_path: Path) -> Path:
    path = tmp_path / "two.py"
    path.write_text(TWO_PIPELINES)
    return path


def test_load_the_only_pipeline_or_by_name(two: Path) -> None:
    assert runner.load_pipeline(EXAMPLE).name == "train-register-deploy"
    assert runner.load_pipeline(two, "first").name == "first-one"  # variable name
    assert runner.load_pipeline(two, "second-one").name == "second-one"  # pipeline name
    with pytest.raises(runner.PipelineError, match="several pipelines .*first.*second.*--pipeline"):
        runner.load_pipeline(two)
    with pytest.raises(runner.PipelineError, match="no pipeline named 'third'"):
        runner.load_pipeline(two, "third")


def test_parameters_are_typed(two: Path) -> None:
    pipeline = runner.load_pipeline(two, "second")
    params = runner.parameters(pipeline)
    assert [(p.name, p.type, p.required) for p in params.values()] == [
        ("name", "String", True), ("times", "Integer", True), ("ratio", "Float", False),
        ("flag", "Boolean", False), ("items", "List", False), ("table", "Dict", False)]
    got = runner.parse_arguments(pipeline, ["name=x=y", "times=3", "ratio=1e-3", "flag=TRUE",
                                            "items=[1, \"a\"]", "table={\"k\": 1}"])
    assert got == {"name": "x=y", "times": 3, "ratio": 0.001, "flag": True, "items": [1, "a"],
                   "table": {"k": 1}}
    with pytest.raises(runner.PipelineError, match="needs --param for times"):
        runner.parse_arguments(pipeline, ["name=x"])
    with pytest.raises(runner.PipelineError, match="times is Integer: 'three' is not one"):
        runner.parse_arguments(pipeline, ["name=x", "times=three"])
    with pytest.raises(runner.PipelineError, match="flag is Boolean"):
        runner.parse_arguments(pipeline, ["name=x", "times=1", "flag=maybe"])
    with pytest.raises(runner.PipelineError, match="not a JSON object"):
        runner.parse_arguments(pipeline, ["name=x", "times=1", "table=[1]"])
    with pytest.raises(runner.PipelineError, match="write NAME=VALUE"):
        runner.parse_arguments(pipeline, ["name"])


@pytest.mark.parametrize("argv, message", [
    (["run", "{missing}"], "missing.py: no such file"),
    (["run", "{text}"], "notes.txt: not a Python file"),
    (["run", "{empty}"], "empty.py: defines no @dsl.pipeline function"),
    (["run", "{broken}"], "broken.py:1: syntax error"),
    (["run", "{raises}"], "raises.py: importing it failed: ModuleNotFoundError: No module named "
                          "'no_such_module_here'"),
    (["run", "{two}"], "defines several pipelines"),
    (["run", "{two}", "--pipeline", "nope"], "no pipeline named 'nope'"),
    (["run", "{example}", "-p", "epochs=3"], "unknown parameter 'epochs' of pipeline "
                                             "'train-register-deploy'; it takes framework, "),
    (["run", "{example}", "--param", "seed=abc"], "parameter seed is Integer: 'abc' is not one"),
    (["run", "{example}", "-p", "threshold"], "--param 'threshold': write NAME=VALUE"),
    (["compile", "{empty}", "-o", "{out}"], "empty.py: defines no @dsl.pipeline function"),
    (["compile", "{example}", "-o", "{blocked}/p.yaml"], "cannot write"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path,
                                          two: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.py").write_text("from kfp import dsl\nX = 1\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "raises.py").write_text("import no_such_module_here\n")
    (tmp_path / "blocked").write_text("a file, not a folder")
    paths = {"missing": tmp_path / "missing.py", "text": tmp_path / "notes.txt",
             "empty": tmp_path / "empty.py", "broken": tmp_path / "broken.py",
             "raises": tmp_path / "raises.py", "two": two, "example": EXAMPLE,
             "out": tmp_path / "out.yaml", "blocked": tmp_path / "blocked"}
    code, out, err = turnout(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"turnout pipeline {argv[0]}: ")
    assert message in lines[0]
    assert "Traceback" not in err


# ---- steps without kfp --------------------------------------------------------------------

def test_gate() -> None:
    metrics = {"accuracy": 0.9, "rmse": 2.0, "nan": math.nan}
    assert steps.gate(metrics, "accuracy", 0.9) == steps.Gate(True, 0.9,
                                                              "gate passed: accuracy 0.9 >= 0.9")
    assert not steps.gate(metrics, "accuracy", 1.01).passed
    assert steps.gate(metrics, "rmse", 2.5, higher_is_better=False).passed
    lower = steps.gate(metrics, "rmse", 1.5, higher_is_better=False)
    assert (lower.passed, lower.reason) == (False, "gate failed: rmse 2 > 1.5")
    assert not steps.gate(metrics, "nan", 0.0).passed
    with pytest.raises(ValueError, match="no metric 'f1'; it has accuracy, nan, rmse"):
        steps.gate(metrics, "f1", 0.5)


def test_hyperparameters_and_lineage() -> None:
    assert steps.parse_hyperparameters("") == steps.parse_hyperparameters(None) == {}
    assert steps.parse_hyperparameters('{"epochs": 3}') == {"epochs": 3}
    assert steps.parse_hyperparameters({"epochs": 3}) == {"epochs": 3}
    with pytest.raises(ValueError, match="must be a JSON object"):
        steps.parse_hyperparameters("[1]")
    with pytest.raises(ValueError, match="not JSON"):
        steps.parse_hyperparameters("{epochs: 3}")
    # Artifact metadata comes back from kfp with every number a float.
    assert steps.lineage(pipeline="p", run_name="p-2026", run_id="42", task="",
                         metadata={"dataset": "iris", "seed": 3.0, "shuffle_labels": False}) == {
        "pipeline": "p", "pipeline_run": "p-2026", "pipeline_run_id": "42", "dataset": "iris",
        "seed": "3", "shuffle_labels": "False"}


def test_refresh_without_a_plane_is_reported(tmp_path: Path) -> None:
    ok, said = steps.refresh_plane("fraud", str(tmp_path))
    assert not ok
    assert said == f"turnout rollout: no running plane found in {tmp_path} (start one with turnout up)"


def test_progress_lines() -> None:
    task = runner.TaskReport("train-model")
    assert cli.format_event(task, 14) == "train-model     started"
    task.state, task.seconds, task.outputs = "succeeded", 2.345, {"value": "0.9", "passed": "True",
                                                                 "plane": ""}
    assert cli.format_event(task, 14) == "train-model     succeeded in 2.3s (passed=True, value=0.9)"
    task.state, task.reason = "failed", "ValueError: bad"
    assert cli.format_event(task, 14) == "train-model     failed in 2.3s: ValueError: bad"
    task.state, task.reason = "skipped", "metric-gate is false"
    assert cli.format_event(task, 14) == "train-model     skipped (metric-gate is false)"
