"""The study database, with trials that always name the tuner running them.

Two gaps in Optuna's RDB storage matter to a tuner that can be killed and resumed:

* Optuna claims an enqueued trial by reading it ``FOR UPDATE`` and setting it RUNNING; SQLite has
  no row locks, so two worker threads of one tuner could both claim the same queued trial (a
  retried one, after a resume), run it twice and fail telling the second result ("Cannot tell a
  COMPLETE trial"). Claims are serialised within the process here; a server database
  (PostgreSQL, MySQL) locks the row itself, which also covers tuners on several machines.
* A new trial is created RUNNING before the objective runs; a tuner killed in between left a
  RUNNING trial that named no owner, so no resume could tell it was orphaned. New trials are
  created with the owner attribute in the same insert; a claimed queued trial gets it right
  after the claim (the resume also fails ownerless RUNNING trials older than the grace period).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any


def open_storage(url: str, *, owner_attr: str, owner: str, **kwargs: Any) -> Any:
    """An ``optuna.storages.RDBStorage`` for ``url`` whose trials carry ``owner_attr: owner``
    from the moment they run, and whose WAITING → RUNNING claims are atomic among this
    process's threads."""
    import optuna
    from optuna.trial import FrozenTrial, TrialState

    class OwnedTrialStorage(optuna.storages.RDBStorage):
        _claims = threading.Lock()

        def _create_new_trial(self, study_id: int,
                              template_trial: FrozenTrial | None = None) -> FrozenTrial:
            if template_trial is None:
                template_trial = FrozenTrial(
                    number=-1, state=TrialState.RUNNING, value=None, values=None,
                    datetime_start=datetime.now(), datetime_complete=None, params={},
                    distributions={}, user_attrs={owner_attr: owner}, system_attrs={},
                    intermediate_values={}, trial_id=-1)
            return super()._create_new_trial(study_id, template_trial)

        def set_trial_state_values(self, trial_id: int, state: TrialState,
                                   values: Any = None) -> bool:
            if state != TrialState.RUNNING:
                return super().set_trial_state_values(trial_id, state, values)
            with self._claims:
                claimed = super().set_trial_state_values(trial_id, state, values)
            if claimed:
                self.set_trial_user_attr(trial_id, owner_attr, owner)
            return claimed

    return OwnedTrialStorage(url, **kwargs)
