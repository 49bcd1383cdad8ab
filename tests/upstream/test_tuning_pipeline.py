"""The tune -> train distributed -> compare with the champion -> register + move the alias
example pipeline, end to end on kfp.local against a temporary SQLite registry: a weak champion
is replaced by the tuned model (20 trials, 2 DDP processes) with its lineage; a second run
finds nothing better (the study resumes with its 20 trials) and leaves the alias alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kfp")
pytest.importorskip("mlflow")
pytest.importorskip("optuna")
pytest.importorskip("torch")

from upstream.pipelines import runner  # noqa: E402
from upstream.registry import Registry  # noqa: E402
from upstream.training import train  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pipelines" / "tune_train_register.py"
ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TURNOUT_PIPELINE_IMAGE",
       "TURNOUT_TUNING_STORAGE", "TURNOUT_STATE_DIR")
TASKS = ["tune-model", "train-distributed", "compare-with-champion", "register-tuned-model",
         "deploy-model"]


def run(pipeline: Any, state: Path, root: Path) -> tuple[Any, dict[str, str]]:
    states: dict[str, str] = {}
    result = runner.run_pipeline(pipeline, {"state_dir": str(state)}, root=root,
                                 on_event=lambda task: states.__setitem__(task.name, task.state))
    return result, states


def test_tune_train_register_promotes_only_a_better_model(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    state, root = tmp_path / ".turnout", tmp_path / "runs"
    registry = Registry(state_dir=state)
    weak = train("torch", "breast_cancer", tmp_path / "weak", params={"epochs": 2, "hidden": 4},
                 shuffle_labels=True, model_name="cancer-torch")
    registry.register(weak.folder, "cancer-torch", framework="torch", alias="champion")
    pipeline = runner.load_pipeline(EXAMPLE)

    result, states = run(pipeline, state, root)
    assert result.succeeded, result.error
    assert states == dict.fromkeys(TASKS, "succeeded")
    tasks = result.tasks
    assert tasks["compare-with-champion"].outputs["better"] == "True"
    champion = registry.resolve("models:/cancer-torch@champion")
    assert champion.version == "2"
    lineage = champion.lineage
    assert lineage["tuning_study"] == "cancer-torch"
    assert lineage["tuning_trial"] == tasks["tune-model"].outputs["best_trial"]
    assert lineage["tuning_trials"] == "20"
    assert lineage["world_size"] == "2" and lineage["restarts"] == "0"
    assert lineage["pipeline"] == "tune-train-register"
    assert champion.metrics["log_loss"] < weak.metrics["log_loss"]
    import optuna

    study = optuna.load_study(study_name="cancer-torch",
                              storage=f"sqlite:///{state / 'tuning.db'}")
    assert len([t for t in study.get_trials() if t.state.is_finished()]) == 20

    again, states = run(pipeline, state, root)
    assert again.succeeded, again.error
    assert states["compare-with-champion"] == "succeeded"
    assert states["register-tuned-model"] == states["deploy-model"] == "skipped"
    assert again.tasks["compare-with-champion"].outputs["better"] == "False"
    assert registry.resolve("models:/cancer-torch@champion").version == "2"
    assert [v.version for v in registry.versions("cancer-torch")] == ["2", "1"]
    assert len(study.get_trials()) == 20  # resumed: nothing left to try
