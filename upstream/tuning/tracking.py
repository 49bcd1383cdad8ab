"""Every trial in MLflow: one parent run per study, one nested run per trial.

The tracking store is the registry's (``upstream.registry.Registry``): ``tracking_uri``, else
``MLFLOW_TRACKING_URI``, else the SQLite database in the state folder. Runs go to the MLflow
experiment named after the Katib Experiment. The parent run's id is kept in the study, so a
resumed tuning adds its trials under the same parent.

A trial's run (``trial-<number>``, tag ``mlflow.parentRunId``) holds its hyperparameters as
params, every reported epoch's metrics at their step, the final validation metrics, its Optuna
state as a tag (``turnout.tuning.state``: COMPLETE, PRUNED, FAIL) and the run status FINISHED,
KILLED (pruned) or FAILED. It is written when the trial ends, so a killed tuning leaves no
half-written trial runs.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "turnout.tuning.study"
TRIAL_TAG = "turnout.tuning.trial"
STATE_TAG = "turnout.tuning.state"
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite tracking database, as the registry does
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class Tracker:
    """The MLflow runs of one study. Thread-safe: trials end on several threads at once."""

    def __init__(self, tracking_uri: str | None, state_dir: Path | None, experiment: str,
                 study: str) -> None:
        from upstream.registry import Registry

        registry = Registry(tracking_uri, state_dir=state_dir)
        self.tracking_uri = registry.tracking_uri
        self.registry_uri = registry.registry_uri
        self.experiment = experiment
        self.study = study
        self._lock = threading.Lock()
        self._client: Any = None
        self._experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def _mlflow(self) -> Any:
        if self._client is None:
            from upstream.registry.registry import _mlflow

            mlflow = _mlflow()
            database = _sqlite_path(self.tracking_uri)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri,
                                               registry_uri=self.registry_uri)
        return self._client

    def _experiment_for(self, client: Any) -> str:
        if self._experiment_id is None:
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                database = _sqlite_path(self.tracking_uri)
                location = (database.parent / ARTIFACTS_DIR).as_uri() if database else None
                try:
                    self._experiment_id = client.create_experiment(
                        self.experiment, artifact_location=location)
                except Exception:  # created meanwhile by another tuner
                    found = client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                if found.lifecycle_stage != "active":
                    client.restore_experiment(found.experiment_id)
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def open_parent(self, existing: str | None, params: Mapping[str, str]) -> str:
        """The study's parent run: ``existing`` (set running again) when this store has it,
        else a new one with ``params`` (the search space)."""
        from mlflow.entities import Param

        with self._lock:
            client = self._mlflow()
            experiment_id = self._experiment_for(client)
            if existing:
                with contextlib.suppress(Exception):
                    run = client.get_run(existing)
                    if run.info.experiment_id == experiment_id:
                        client.update_run(existing, status="RUNNING")
                        self.parent_run_id = existing
                        return existing
            run = client.create_run(experiment_id, run_name=f"tune-{self.study}",
                                    tags={STUDY_TAG: self.study})
            self.parent_run_id = run.info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for start in range(0, len(items), 100):
                client.log_batch(self.parent_run_id, params=items[start:start + 100])
            return self.parent_run_id

    def log_trial(self, number: int, state: str, params: Mapping[str, Any],
                  steps: list[tuple[int, dict[str, float]]], final: Mapping[str, float] | None,
                  started: float, ended: float, error: str = "") -> str:
        """One nested run for a finished trial; its run id."""
        from mlflow.entities import Metric, Param

        with self._lock:
            client = self._mlflow()
            experiment_id = self._experiment_for(client)
            tags = {PARENT_TAG: self.parent_run_id or "", STUDY_TAG: self.study,
                    TRIAL_TAG: str(number), STATE_TAG: state}
            if error:
                tags["turnout.tuning.error"] = error[:4000]
            run = client.create_run(experiment_id, start_time=int(started * 1000),
                                    run_name=f"trial-{number}", tags=tags)
            run_id = run.info.run_id
            metrics = [Metric(k, float(v), int(started * 1000) + step, step)
                       for step, values in steps for k, v in values.items()]
            last = steps[-1] if steps else None
            if final and (last is None or dict(last[1]) != dict(final)):
                step = last[0] if last else 0
                metrics += [Metric(k, float(v), int(ended * 1000), step) for k, v in final.items()]
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            client.log_batch(run_id, params=items[:100])
            for start in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[start:start + 1000])
            with contextlib.redirect_stdout(io.StringIO()):  # "View run ..." links
                client.set_terminated(run_id, status=_STATUS.get(state, "FAILED"),
                                      end_time=int(ended * 1000))
            return run_id

    def close_parent(self, status: str, best: Mapping[str, Any] | None) -> None:
        from mlflow.entities import Metric

        if self.parent_run_id is None:
            return
        with self._lock:
            client = self._mlflow()
            if best:
                now = int(time.time() * 1000)
                client.log_batch(self.parent_run_id, metrics=[
                    Metric(f"best_{best['metric']}", float(best["value"]), now, 0)])
                for key in ("trial", "run_id"):
                    if best.get(key) is not None:
                        client.set_tag(self.parent_run_id, f"turnout.tuning.best_{key}",
                                       str(best[key]))
            with contextlib.redirect_stdout(io.StringIO()):
                client.set_terminated(self.parent_run_id, status=status)

    def children(self) -> list[Any]:
        """The trial runs under the parent (for tests and reports)."""
        client = self._mlflow()
        experiment_id = self._experiment_for(client)
        return client.search_runs([experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                  max_results=10000)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    raw = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return Path(raw).absolute() if raw and raw != ":memory:" else None
