"""Tuning runs for real: the example Experiment (XGBoost on breast_cancer, TPE, 12 trials, 2 in
parallel, median stopping) against a temporary state folder; a tuning killed mid-run resumes
the same study. Asserted from the Optuna study, the MLflow runs and the registry."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

optuna = pytest.importorskip("optuna")
pytest.importorskip("mlflow")
pytest.importorskip("xgboost")

from upstream.registry import Registry  # noqa: E402
from upstream.training import predict_in_process, train  # noqa: E402
from upstream.tuning import TuneResult, tune  # noqa: E402
from upstream.tuning.tracking import Tracker  # noqa: E402
from upstream.tuning.tuner import ERROR_ATTR, METRICS_ATTR, RETRY_ATTR, counts_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tuning" / "xgboost-experiment.yaml"
ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TURNOUT_TUNING_STORAGE", "TURNOUT_STATE_DIR")


@pytest.fixture(autouse=True)
def _no_outside_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneResult, Path]:
    state = tmp_path_factory.mktemp("tuning") / ".turnout"
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV:
            patch.delenv(name, raising=False)
        result = tune(EXAMPLE, state_dir=state, alias="champion")
    return result, state


def study_of(state: Path, name: str = "cancer-xgboost") -> Any:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{state / 'tuning.db'}")


def test_finds_a_configuration_at_least_as_good_as_the_defaults(tuned: Any, tmp_path: Path
                                                                ) -> None:
    result, state = tuned
    # The defaults: the template's fixed n_estimators, every other hyperparameter the
    # component's default (learning_rate 0.1, max_depth 3), judged on the same test split.
    default = train("xgboost", "breast_cancer", tmp_path / "default", params={"n_estimators": 10})
    assert result.metrics["log_loss"] <= default.metrics["log_loss"]
    assert result.hyperparameters["n_estimators"] == 10
    assert result.counts["complete"] + result.counts["pruned"] + result.counts["failed"] == 12
    assert result.ran == 12


def test_trials_ran_two_at_a_time(tuned: Any) -> None:
    trials = [t for t in study_of(tuned[1]).get_trials() if t.state.is_finished()]
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    overlapping = sum(1 for (_, end), (start, _) in zip(spans, spans[1:], strict=False)
                      if start < end)
    assert overlapping >= 1
    # never more than two at once
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_median_stopping_pruned_trials(tuned: Any) -> None:
    study = study_of(tuned[1])
    pruned = [t for t in study.get_trials() if t.state.name == "PRUNED"]
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert pruned, "median stopping pruned nothing"
    for trial in pruned:
        # stopped after start_step (3) reports; as in Optuna's own pruning callbacks the verdict
        # follows every report, the 10th (last) one included, so a trial running with others
        # may be pruned on its final round when the median moved under it
        assert 3 <= trial.last_step <= 10
        assert sorted(trial.intermediate_values) == list(range(1, trial.last_step + 1))
        assert METRICS_ATTR not in trial.user_attrs  # a pruned trial keeps no final metrics
    for trial in complete:  # a completed trial reported every boosting round
        assert sorted(trial.intermediate_values) == list(range(1, 11))
        assert trial.intermediate_values[10] == pytest.approx(trial.value)


def test_every_trial_is_a_nested_mlflow_run(tuned: Any) -> None:
    result, state = tuned
    tracker = Tracker(None, state, "cancer-xgboost", "cancer-xgboost")
    tracker.parent_run_id = result.mlflow_run_id
    children = tracker.children()
    assert len(children) == 12
    states = {r.data.tags["turnout.tuning.state"] for r in children}
    assert states <= {"COMPLETE", "PRUNED", "FAIL"} and "PRUNED" in states
    best = next(r for r in children if r.info.run_id == result.best_run_id)
    assert best.data.tags["turnout.tuning.trial"] == str(result.best_trial)
    assert best.info.status == "FINISHED"
    assert best.data.params["hp.n_estimators"] == "10"
    assert best.data.metrics["log_loss"] == pytest.approx(result.best_value)
    history = tracker._mlflow().get_metric_history(best.info.run_id, "log_loss")
    assert [m.step for m in history] == list(range(1, 11))


def test_best_model_registered_with_trial_lineage(tuned: Any) -> None:
    result, state = tuned
    registry = Registry(state_dir=state)
    version = registry.resolve("models:/cancer-xgboost@champion")
    assert version.version == result.registered.version
    lineage = version.lineage
    assert lineage["tuning_study"] == "cancer-xgboost"
    assert lineage["tuning_trial"] == str(result.best_trial)
    assert lineage["tuning_mlflow_run"] == result.mlflow_run_id
    assert lineage["tuning_mlflow_trial_run"] == result.best_run_id
    assert float(lineage["tuning_trial_value"]) == pytest.approx(result.best_value)
    assert version.metrics["log_loss"] == pytest.approx(result.metrics["log_loss"])
    folder = Path(registry.fetch(version))
    rows = yaml.safe_load((folder / "model-settings.yaml").read_text())
    assert rows["runtime"] == "xgboost"
    from upstream.datasets import load_dataset

    data = load_dataset("breast_cancer")
    got, want = predict_in_process(folder, data.X_test), predict_in_process(result.folder,
                                                                            data.X_test)
    assert (got["predict"] == want["predict"]).all()
    # Running the finished Experiment again registers nothing new.
    again = tune(EXAMPLE, state_dir=state)
    assert again.ran == 0 and again.registered.version == version.version


def test_an_interrupted_tuning_resumes_the_same_study(tmp_path: Path) -> None:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["name"] = "cancer-resume"
    manifest["spec"]["maxTrialCount"] = 10
    manifest["spec"].pop("earlyStopping")
    manifest["spec"]["algorithm"] = {"algorithmName": "random",
                                     "algorithmSettings": [{"name": "random_state",
                                                            "value": "3"}]}
    args = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    args[2] = "--param=n_estimators=150"  # long enough trials to be caught running
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(manifest))
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "upstream.tuning.cli", "-f", str(path), "--state-dir", str(state),
         "--no-register"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    before: list[Any] = []
    try:
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            try:
                trials = study_of(state, "cancer-resume").get_trials(deepcopy=False)
            except Exception:  # the study is not there yet
                continue
            finished = [t for t in trials if t.state.is_finished()]
            running = [t for t in trials if t.state.name == "RUNNING"
                       and finished and len(t.params) == len(finished[0].params)]
            if len(finished) >= 3 and running:  # a trial running its command, all params set
                process.send_signal(signal.SIGKILL)
                before = trials
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert before, "the tuning was never caught with a trial running"
    # what the database held when the tuner died (a trial may have ended after the snapshot)
    before = study_of(state, "cancer-resume").get_trials(deepcopy=False)
    killed = [t for t in before if t.state.name == "RUNNING"]
    done_before = sum(1 for t in before if t.state.is_finished())
    assert done_before < 10

    result = tune(path, state_dir=state, refit=False)
    study = study_of(state, "cancer-resume")
    trials = study.get_trials()
    counts = counts_of(study)
    assert counts["complete"] + counts["pruned"] + counts["failed"] == 10
    assert counts["running"] == 0
    assert result.ran == 10 - done_before
    # the numbers go on; what was running when the tuner died is failed (not counted) and runs
    # again with the same configuration
    assert min(t.number for t in trials if t.number not in {b.number for b in before}) > max(
        b.number for b in before)
    for trial in killed:
        after = trials[trial.number]
        assert after.state.name == "FAIL" and ERROR_ATTR not in after.user_attrs
        retry = [t for t in trials if t.user_attrs.get(RETRY_ATTR) == trial.number]
        if not trial.params:  # killed before it drew a value (two trials run at once): there
            assert retry == []  # is nothing to keep, and a fresh trial takes its place
            continue
        # the values it had drawn are kept (one killed while drawing gets the rest drawn anew)
        assert len(retry) == 1 and trial.params.items() <= retry[0].params.items()
        assert retry[0].state.name == "COMPLETE"
