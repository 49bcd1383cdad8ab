"""The study database: a queued trial is claimed once however many threads race for it, and
every trial names its tuner from the insert on (so a resume can tell orphans)."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
from optuna.trial import TrialState

from upstream.tuning.storage import open_storage


def _study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", owner_attr="owner",
                           owner="host:1")
    return optuna.create_study(study_name="s", storage=storage)


def test_a_queued_trial_is_claimed_by_one_thread_only(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for round_ in range(20):
        study.enqueue_trial({"x": float(round_)})
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        trial_id = waiting[0]._trial_id
        start = threading.Barrier(4)
        wins: list[bool] = []

        def claim(start: threading.Barrier, wins: list[bool], trial_id: int) -> None:
            start.wait()
            wins.append(study._storage.set_trial_state_values(trial_id, TrialState.RUNNING))

        threads = [threading.Thread(target=claim, args=(start, wins, trial_id))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(wins) == [False, False, False, True]
        claimed = study._storage.get_trial(trial_id)
        assert claimed.state == TrialState.RUNNING and claimed.user_attrs["owner"] == "host:1"
        study.tell(claimed.number, 0.0)


def test_a_new_trial_names_its_owner_in_the_insert(tmp_path: Path) -> None:
    study = _study(tmp_path)
    trial = study.ask()  # created RUNNING: a tuner killed now leaves a trial it can be told by
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.state == TrialState.RUNNING and stored.user_attrs == {"owner": "host:1"}
    study.tell(trial, 1.0)
    assert study.best_trial.user_attrs == {"owner": "host:1"}
