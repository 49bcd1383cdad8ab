"""Run a Katib Experiment locally with Optuna: trials in parallel worker processes, the study in a
database so an interrupted tuning resumes, every trial in MLflow, the best configuration
retrained and registered with its trial lineage.

* **Study**: Optuna study named after the Experiment (``metadata.name``) in ``storage``: the
  ``--storage`` URL, else ``TURNOUT_TUNING_STORAGE``, else ``sqlite:///<state_dir>/tuning.db``.
  A team shares one study by giving every tuner the same database URL (PostgreSQL, MySQL).
  Running the same Experiment again continues the study: trial numbers go on, and only the
  trials still missing from ``maxTrialCount`` run. A changed search space, objective, algorithm
  or trial command under the same name is refused (the counts, the goal and the parallelism may
  change).
* **Interrupted trials**: a trial left running by a tuner that is gone (its process on this
  machine has exited, or its heartbeat in the database is over a minute old) is marked failed,
  is not counted, and its configuration is queued to run again.
* **Trials**: ``parallelTrialCount`` threads, each driving one worker process
  (:mod:`upstream.tuning.workers`); each trial reports its objective per epoch to Optuna,
  which prunes it under median stopping.
* **Counting**: ``maxTrialCount`` counts completed, pruned (Katib: early stopped) and failed
  trials. More than ``maxFailedTrialCount`` failures fail the run (:class:`TuningFailed`), as
  Katib fails the Experiment. Reaching ``objective.goal`` ends it early.
* **The best model**: the best completed trial's configuration is trained again on the full
  training split (trials are judged on a validation split of it) into a model folder whose
  metrics.json holds the test split's metrics, then registered (``upstream.registry``) with
  ``turnout.lineage.tuning_*`` tags naming the study, the trial and the MLflow runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from upstream.tuning.experiment import Experiment, ExperimentError, Plan, load_experiment, plan
from upstream.tuning.progress import Progress
from upstream.tuning.storage import open_storage

STORAGE_ENV = "TURNOUT_TUNING_STORAGE"
STATE_ENV = "TURNOUT_STATE_DIR"
DEFAULT_STATE_DIR = Path(".turnout")
STORAGE_FILE = "tuning.db"
HEARTBEAT_S = 10
GRACE_S = 60
# Trial and study attributes Turnout keeps in the Optuna database.
OWNER_ATTR = "turnout.owner"            # host:pid of the tuner running the trial
ERROR_ATTR = "turnout.error"            # a trial that failed on its own (not interrupted)
METRICS_ATTR = "turnout.metrics"        # the final validation metrics
HYPER_ATTR = "turnout.hyperparameters"  # every hyperparameter the component used (JSON)
RETRY_ATTR = "turnout.retry_of"         # the interrupted trial this one runs again
IDENTITY_ATTR = "turnout.identity"
PARENT_ATTR = "turnout.mlflow.parent_run"
TRIAL_RUN_ATTR = "turnout.mlflow.trial_run."  # + trial number, on the study
REGISTERED_ATTR = "turnout.registered "  # + registry and model name: {trial, uri}


class TuningFailed(RuntimeError):
    """The Experiment failed: too many failed trials, or no trial completed."""


@dataclass(frozen=True)
class TuneResult:
    study: str
    storage: str                      # the study's database, password hidden
    plan: Plan
    best_trial: int
    best_value: float                 # the objective on the validation split
    best_params: dict[str, Any]       # the searched parameters' values
    hyperparameters: dict[str, Any]   # every hyperparameter the trial's component used
    seed: int
    counts: dict[str, int]            # complete, pruned, failed, interrupted
    ran: int                          # trials this call ran
    mlflow_run_id: str | None         # the study's parent run
    best_run_id: str | None           # the best trial's nested run
    folder: Path | None = None        # the retrained best model
    metrics: dict[str, float] = field(default_factory=dict)  # its test-split metrics
    registered: Any = None            # upstream.registry.ResolvedVersion
    lineage: dict[str, str] = field(default_factory=dict)


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


def storage_url(storage: str | None, state_dir: Path) -> str:
    return storage or os.environ.get(STORAGE_ENV) or \
        f"sqlite:///{(state_dir / STORAGE_FILE).absolute()}"


def tune(experiment: Experiment | Plan | str | Path | Mapping[str, Any], *,
         state_dir: Path | None = None, storage: str | None = None,
         tracking_uri: str | None = None, refit: bool = True, register: bool = True,
         model_name: str | None = None, alias: str | None = None,
         max_trials: int | None = None, parallel: int | None = None, keep_trials: bool = False,
         refit_dir: Path | None = None, progress: Progress | None = None) -> TuneResult:
    """Run (or resume) the Experiment; see the module docstring. ``refit=False`` skips the
    retraining (and so the registration): the result names the best configuration only.
    ``max_trials``/``parallel`` override the Experiment's counts; ``refit_dir`` is where the
    retrained model goes (a new folder; default ``<state>/tuning/NAME/model-trial-N``). Raises
    ExperimentError for
    a manifest that cannot run, TuningFailed when the Experiment fails."""
    the_plan = experiment if isinstance(experiment, Plan) else plan(
        experiment if isinstance(experiment, Experiment) else load_experiment(experiment))
    if max_trials is not None:
        the_plan = _replace(the_plan, max_trials=int(max_trials))
    if parallel is not None:
        the_plan = _replace(the_plan, parallel=int(parallel))
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    run = _Run(the_plan, state, storage_url(storage, state), tracking_uri,
               progress or Progress(), keep_trials)
    run.refit_dir = Path(refit_dir) if refit_dir is not None else None
    return run.execute(refit=refit, register=register and refit,
                       model_name=model_name or the_plan.name, alias=alias)


def _replace(the_plan: Plan, **changes: Any) -> Plan:
    import dataclasses

    return dataclasses.replace(the_plan, **changes)


def redact(url: str) -> str:
    from upstream.registry.registry import redact as hide

    return hide(url)


class _Interrupted(Exception):
    """A trial's worker died while the tuner was stopping: not the trial's fault."""


class _TrialFailed(Exception):
    pass


class _Run:
    def __init__(self, the_plan: Plan, state: Path, storage: str, tracking_uri: str | None,
                 progress: Progress, keep_trials: bool) -> None:
        self.plan = the_plan
        self.state = state
        self.storage_url = storage
        self.tracking_uri = tracking_uri
        self.progress = progress
        self.keep_trials = keep_trials
        self.work = state / "tuning" / the_plan.name
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.records: dict[int, dict[str, Any]] = {}
        self.records_lock = threading.Lock()
        self.stopping = False
        self.failed_out = False
        self.ran = 0
        self.refit_dir: Path | None = None

    # ---- the study --------------------------------------------------------------------

    def _study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if self.storage_url.startswith("sqlite:///"):
            Path(self.storage_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.storage_url.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.storage = open_storage(
                    self.storage_url, owner_attr=OWNER_ATTR, owner=self.owner,
                    heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=_retry, **kwargs)
        except Exception as exc:
            raise ExperimentError(f"cannot open the study database {redact(self.storage_url)}: "
                                  f"{' '.join(str(exc).split())[:300]}") from None
        study = optuna.create_study(
            study_name=self.plan.name, storage=self.storage, sampler=make_sampler(self.plan),
            pruner=make_pruner(self.plan), direction=self.plan.direction, load_if_exists=True)
        identity = study.user_attrs.get(IDENTITY_ATTR)
        if identity is None:
            study.set_user_attr(IDENTITY_ATTR, self.plan.identity)
        elif identity != self.plan.identity:
            raise ExperimentError(
                f"metadata.name: study {self.plan.name!r} in {redact(self.storage_url)} was run "
                "with another search space, objective, algorithm or trial command; rename the "
                "Experiment, or delete the study to start over")
        return study

    def _recover(self, study: Any) -> int:
        """Trials left running by a tuner of this machine that is gone: failed, retried."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        recovered = 0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get(OWNER_ATTR, ""))
            owner_host, _, pid = owner.rpartition(":")
            if not owner:  # claimed by a tuner that died before naming itself
                started = trial.datetime_start
                if started is None or (datetime.now() - started).total_seconds() < GRACE_S:
                    continue
            elif owner_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            with contextlib.suppress(Exception):  # another tuner may have got there first
                if self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    _retry(study, trial)
                    recovered += 1
        return recovered

    # ---- running ----------------------------------------------------------------------

    def execute(self, *, refit: bool, register: bool, model_name: str,
                alias: str | None) -> TuneResult:
        from upstream.tuning.tracking import Tracker

        study = self._study()
        recovered = self._recover(study)
        counts = counts_of(study)
        done = counts["complete"] + counts["pruned"] + counts["failed"]
        remaining = max(0, self.plan.max_trials - done)
        self.done = done
        where = redact(self.storage_url)
        if done or recovered:
            self.progress.message(
                f"study {self.plan.name}: resuming in {where}: {done} of {self.plan.max_trials} "
                f"trials done" + (f", {recovered} interrupted trial(s) queued again"
                                  if recovered else ""))
        else:
            self.progress.message(
                f"study {self.plan.name}: {self.plan.algorithm}, {self.plan.max_trials} trials, "
                f"{self.plan.parallel} in parallel, {self.plan.direction} {self.plan.metric} "
                f"({self.plan.framework} on {self.plan.dataset}); study in {where}")
        self.tracker = Tracker(self.tracking_uri, self.state, self.plan.name, self.plan.name)
        parent = self.tracker.open_parent(study.user_attrs.get(PARENT_ATTR), self._space())
        if study.user_attrs.get(PARENT_ATTR) != parent:
            study.set_user_attr(PARENT_ATTR, parent)
        try:
            if remaining and not self._finished(study, counts):
                self._optimize(study, remaining)
            counts = counts_of(study)
            if self.failed_out:
                raise TuningFailed(
                    f"experiment {self.plan.name} failed: {counts['failed']} trials failed "
                    f"(maxFailedTrialCount {self.plan.max_failed})")
            if not counts["complete"]:
                raise TuningFailed(f"experiment {self.plan.name}: no trial completed "
                                   f"({counts['pruned']} pruned, {counts['failed']} failed)")
            result = self._result(study, counts)
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):
                self.tracker.close_parent(status, None)
            raise
        self.tracker.close_parent("FINISHED", {
            "metric": self.plan.metric, "value": result.best_value, "trial": result.best_trial,
            "run_id": result.best_run_id})
        self.progress.message(
            f"best trial {result.best_trial}: {self.plan.metric}={result.best_value:.6g} "
            f"(validation) with {_text(result.best_params)}; "
            f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed")
        if refit:
            result = self._refit(result, model_name)
            if register:
                result = self._register(result, model_name, alias, study)
        return result

    def _finished(self, study: Any, counts: Mapping[str, int]) -> bool:
        best = _best(study)
        return best is not None and self.plan.reached(best.value)

    def _space(self) -> dict[str, str]:
        space = {f"space.{p.name}": p.describe() for p in self.plan.parameters}
        return {"algorithm": self.plan.algorithm, "objective": f"{self.plan.direction} "
                f"{self.plan.metric}", "framework": self.plan.framework,
                "dataset": self.plan.dataset, "max_trials": str(self.plan.max_trials),
                "parallel": str(self.plan.parallel), **space,
                **{f"algorithm.{k}": v for k, v in self.plan.algorithm_settings.items()}}

    def _optimize(self, study: Any, remaining: int) -> None:
        import optuna

        from upstream.tuning.workers import Pool

        parallel = max(1, min(self.plan.parallel, remaining))
        pool = Pool(parallel)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", message=".*independent sampl.*")
                study.optimize(partial(self._objective, pool), n_trials=remaining,
                               n_jobs=parallel, catch=(_TrialFailed, _Interrupted),
                               callbacks=[self._after_trial], gc_after_trial=False)
        except KeyboardInterrupt:
            self.stopping = True
            pool.close(kill=True)
            raise
        finally:
            pool.close(kill=self.stopping)

    def _objective(self, pool: Any, trial: Any) -> float:
        import optuna

        values = {p.name: suggest(trial, p) for p in self.plan.parameters}
        argv = self.plan.trial_argv(values)
        out_dir = self.work / "trials" / str(trial.number)
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        steps: list[tuple[int, dict[str, float]]] = []
        record = {"params": values, "argv": argv, "steps": steps, "started": time.time()}
        with self.records_lock:
            self.records[trial.number] = record
        self.progress.trial_started(trial.number, values)

        def on_step(step: int, metrics: dict[str, float]) -> bool:
            steps.append((step, metrics))
            value = metrics.get(self.plan.metric)
            self.progress.trial_step(trial.number, step, self.plan.metric, value)
            if value is None or not math.isfinite(value):
                return False
            trial.report(float(value), step)
            return bool(trial.should_prune())

        worker = pool.acquire()
        try:
            outcome = worker.run(argv, out_dir, on_step, keep=self.keep_trials)
        finally:
            pool.release(worker)
        record.update(outcome=outcome, ended=time.time())
        if outcome.state == "done":
            metrics = outcome.metrics or {}
            trial.set_user_attr(METRICS_ATTR, metrics)
            trial.set_user_attr(HYPER_ATTR, json.dumps(outcome.params, sort_keys=True,
                                                       default=str))
            value = metrics.get(self.plan.metric)
            if value is None or not math.isfinite(float(value)):
                error = f"the trial reported no finite {self.plan.metric}"
                record["error"] = error
                trial.set_user_attr(ERROR_ATTR, error)
                raise _TrialFailed(error)
            record["final"] = metrics
            return float(value)
        if outcome.state == "pruned":
            raise optuna.TrialPruned(f"at step {outcome.step}")
        if outcome.state == "lost" and self.stopping:
            raise _Interrupted(outcome.error)
        record["error"] = outcome.error
        trial.set_user_attr(ERROR_ATTR, outcome.error[:2000])
        raise _TrialFailed(outcome.error)

    def _after_trial(self, study: Any, frozen: Any) -> None:
        from optuna.trial import TrialState

        with self.records_lock:
            record = self.records.pop(frozen.number, None)
        self.ran += 1
        state = frozen.state.name
        if record is not None:
            try:
                run_id = self.tracker.log_trial(
                    frozen.number, state, _logged_params(record), record["steps"],
                    record.get("final"), record["started"], record.get("ended", time.time()),
                    record.get("error", ""))
                study.set_user_attr(f"{TRIAL_RUN_ATTR}{frozen.number}", run_id)
            except Exception as exc:  # tracking must not lose the tuning
                self.progress.message(f"trial {frozen.number}: not logged to MLflow: "
                                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        counts = counts_of(study)
        with self.records_lock:  # trials end on several threads: number them in order here
            if state != "FAIL" or ERROR_ATTR in frozen.user_attrs:
                self.done += 1
            done = self.done
        best = _best(study)
        value = frozen.value
        step = frozen.last_step
        if state == "PRUNED" and step is not None:
            value = frozen.intermediate_values.get(step)
        self.progress.trial_finished(
            frozen.number, state, value=value, metric=self.plan.metric,
            params=record["params"] if record else frozen.params,
            seconds=(frozen.duration.total_seconds() if frozen.duration else 0.0), step=step,
            error=str(frozen.user_attrs.get(ERROR_ATTR, "interrupted" if state == "FAIL"
                                            else "")),
            done=min(done, self.plan.max_trials), total=self.plan.max_trials,
            best=best.number if best is not None else None)
        if frozen.state == TrialState.COMPLETE and self.plan.reached(frozen.value):
            self.progress.message(f"trial {frozen.number} reached the goal "
                                  f"{self.plan.metric}={self.plan.goal:g}")
            study.stop()
        if self.plan.max_failed is not None and counts["failed"] > self.plan.max_failed:
            self.failed_out = True
            study.stop()
        if counts["complete"] + counts["pruned"] + counts["failed"] >= self.plan.max_trials:
            study.stop()

    # ---- the result -------------------------------------------------------------------

    def _result(self, study: Any, counts: dict[str, int]) -> TuneResult:
        from upstream.tuning.trial import parse_trial_argv

        best = _best(study)
        assert best is not None
        args = parse_trial_argv(self.plan.trial_argv(best.params))
        text = best.user_attrs.get(HYPER_ATTR)
        hyper = json.loads(text) if isinstance(text, str) else dict(args.params)
        return TuneResult(
            study=self.plan.name, storage=redact(self.storage_url), plan=self.plan,
            best_trial=best.number, best_value=float(best.value), best_params=dict(best.params),
            hyperparameters=hyper, seed=args.seed, counts=counts, ran=self.ran,
            mlflow_run_id=self.tracker.parent_run_id,
            best_run_id=study.user_attrs.get(f"{TRIAL_RUN_ATTR}{best.number}"))

    def _refit(self, result: TuneResult, model_name: str) -> TuneResult:
        import dataclasses

        from upstream.training import train

        out = self.refit_dir or self.work / f"model-trial-{result.best_trial}"
        if self.refit_dir is None and out.exists():
            shutil.rmtree(out)
        self.progress.message(f"training trial {result.best_trial}'s configuration on the full "
                              f"training split into {out}")
        trained = train(self.plan.framework, self.plan.dataset, out,
                        params=result.hyperparameters, seed=result.seed, model_name=model_name)
        shown = " ".join(f"{k}={v:.6g}" for k, v in trained.metrics.items())
        self.progress.message(f"held-out test split: {shown}")
        lineage = {
            "tuning_experiment": self.plan.name, "tuning_study": result.study,
            "tuning_storage": result.storage, "tuning_trial": str(result.best_trial),
            "tuning_trial_value": repr(result.best_value),
            "tuning_objective": f"{self.plan.direction} {self.plan.metric}",
            "tuning_algorithm": self.plan.algorithm,
            "tuning_trials": str(sum(result.counts[k] for k in ("complete", "pruned", "failed"))),
            "tuning_mlflow_run": result.mlflow_run_id or "",
            "tuning_mlflow_trial_run": result.best_run_id or "",
            "dataset": self.plan.dataset, "seed": str(result.seed),
        }
        return dataclasses.replace(result, folder=out, metrics=dict(trained.metrics),
                                   lineage={k: v for k, v in lineage.items() if v})

    def _register(self, result: TuneResult, model_name: str, alias: str | None,
                  study: Any) -> TuneResult:
        import dataclasses

        from upstream.registry import Registry, RegistryError

        assert result.folder is not None
        registry = Registry(self.tracking_uri, state_dir=self.state)
        key = f"{REGISTERED_ATTR}{redact(registry.registry_uri)} {model_name}"
        earlier = study.user_attrs.get(key)
        if isinstance(earlier, dict) and earlier.get("trial") == result.best_trial:
            with contextlib.suppress(RegistryError):  # deleted since: register again
                version = registry.resolve(earlier["uri"])
                if alias:
                    registry.set_alias(model_name, alias, version.version)
                    version = registry.resolve(version.pinned_uri)
                self.progress.message(f"trial {result.best_trial} is already registered as "
                                      f"{version.pinned_uri}" + (f"; alias {alias} points at it"
                                                                 if alias else ""))
                return dataclasses.replace(result, registered=version)
        version = registry.register(
            result.folder, model_name, framework=self.plan.framework, metrics=result.metrics,
            params=result.hyperparameters, lineage=result.lineage, alias=alias,
            description=f"tuned by study {result.study} (trial {result.best_trial})")
        study.set_user_attr(key, {"trial": result.best_trial, "uri": version.pinned_uri})
        moved = f", alias {alias} moved to it" if alias else ""
        self.progress.message(f"registered {version.pinned_uri}{moved}")
        return dataclasses.replace(result, registered=version)


# ---- Optuna pieces ------------------------------------------------------------------------


def counts_of(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif trial.state == TrialState.FAIL:
            counts["failed" if ERROR_ATTR in trial.user_attrs else "interrupted"] += 1
        elif trial.state == TrialState.RUNNING:
            counts["running"] += 1
    return counts


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def _retry(study: Any, trial: Any) -> None:
    """Queue an interrupted trial's configuration again (Optuna's failed-trial callback)."""
    if trial.params and ERROR_ATTR not in trial.user_attrs:
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_ATTR: trial.number},
                            skip_if_exists=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def suggest(trial: Any, parameter: Any) -> Any:
    if parameter.kind == "categorical":
        return trial.suggest_categorical(parameter.name, list(parameter.choices))
    if parameter.kind == "int":
        return trial.suggest_int(parameter.name, int(parameter.low), int(parameter.high),
                                 step=int(parameter.step or 1), log=parameter.log)
    return trial.suggest_float(parameter.name, float(parameter.low), float(parameter.high),
                               step=parameter.step, log=parameter.log)


def _hyperopt_gamma(gamma: float, n: int) -> int:
    """Katib's (hyperopt's) ``gamma``: the best ceil(gamma * sqrt(n)) trials are "good"."""
    return min(int(math.ceil(gamma * math.sqrt(n))), 25)


def make_sampler(the_plan: Plan) -> Any:
    """The Optuna sampler for the Experiment's algorithm (docs/tuning.md has the table)."""
    import optuna

    settings = the_plan.algorithm_settings
    seed = int(settings["random_state"]) if "random_state" in settings else None
    name = the_plan.algorithm
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({p.name: p.grid() for p in the_plan.parameters},
                                           seed=seed)
    if name == "tpe":
        kwargs: dict[str, Any] = {"seed": seed}
        if "n_EI_candidates" in settings:
            kwargs["n_ei_candidates"] = int(settings["n_EI_candidates"])
        if "gamma" in settings:
            kwargs["gamma"] = partial(_hyperopt_gamma, float(settings["gamma"]))
        if "prior_weight" in settings:
            kwargs["prior_weight"] = float(settings["prior_weight"])
        with warnings.catch_warnings():  # gamma and prior_weight: deprecated in Optuna 4.9+
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(**kwargs)
    if name == "multivariate-tpe":
        kwargs = {"seed": seed, "multivariate": True}
        if "n_ei_candidates" in settings:
            kwargs["n_ei_candidates"] = int(settings["n_ei_candidates"])
        if "n_startup_trials" in settings:
            kwargs["n_startup_trials"] = int(settings["n_startup_trials"])
        return optuna.samplers.TPESampler(**kwargs)
    if name == "bayesianoptimization":
        startup = int(settings.get("n_initial_points", 10))
        try:
            import scipy  # noqa: F401 - the GP sampler's dependencies
            import torch  # noqa: F401
        except ImportError:
            warnings.warn("bayesianoptimization: Optuna's GP sampler needs torch and scipy; "
                          "using TPE", stacklevel=2)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "cmaes":
        kwargs = {"seed": seed}
        if "sigma" in settings:
            kwargs["sigma0"] = float(settings["sigma"])
        restart = settings.get("restart_strategy", "none")
        if restart != "none":
            kwargs["restart_strategy"] = restart
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.CmaEsSampler(**kwargs)
    raise ExperimentError(f"spec.algorithm.algorithmName: {name!r} is not supported")


def make_pruner(the_plan: Plan) -> Any:
    import optuna

    if the_plan.early_stopping is None:
        return optuna.pruners.NopPruner()
    # Steps count reports from 1, so "after start_step reports" is step >= start_step.
    return optuna.pruners.MedianPruner(
        n_startup_trials=the_plan.early_stopping["min_trials_required"],
        n_warmup_steps=the_plan.early_stopping["start_step"])


def _logged_params(record: Mapping[str, Any]) -> dict[str, Any]:
    """A trial run's MLflow params: the searched values, and every hyperparameter the trial's
    command gave the component as ``hp.<name>``."""
    from upstream.tuning.trial import parse_trial_argv

    logged = dict(record["params"])
    with contextlib.suppress(ValueError):
        args = parse_trial_argv(record["argv"])
        logged.update({f"hp.{k}": v for k, v in args.params.items()})
        logged.update({"framework": args.framework, "dataset": args.dataset, "seed": args.seed})
    return logged


def _text(params: Mapping[str, Any]) -> str:
    from upstream.tuning.progress import params_text

    return params_text(params)
