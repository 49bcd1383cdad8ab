"""The core of a Katib ``Experiment`` (``kubeflow.org/v1beta1``), read and checked for a local
tuning run: the same YAML a cluster running Katib accepts.

:func:`load_experiment` reads the manifest into pydantic models that forbid unknown fields, so
a Katib field Turnout does not run (``nasConfig``, ``trialTemplate.configMap``, a metrics
collector's ``source``...) is an error that names it, as are unsupported values (an algorithm,
an algorithm setting, a ``normal`` distribution). :func:`plan` then turns the Experiment into a
:class:`Plan`: the Optuna search space, the sampler and pruner settings, and the trial command
(the primary container's ``command`` + ``args``, which run ``python -m upstream.tuning.trial``)
with its ``${trialParameters.NAME}`` placeholders.

Nothing here imports Optuna or a training framework.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"
TRIAL_MODULE = "upstream.tuning.trial"
DEFAULT_PARALLEL = 3  # Katib's default parallelTrialCount
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
# The metrics a training component reports (upstream.training.base.compute_metrics).
METRICS = {"classification": ("accuracy", "f1_macro", "log_loss"),
           "regression": ("rmse", "r2", "mae")}
# Settings each algorithm takes (Katib's names; docs/tuning.md says what each becomes).
ALGORITHM_SETTINGS: dict[str, tuple[str, ...]] = {
    "random": ("random_state",),
    "grid": ("random_state",),
    "tpe": ("random_state", "n_EI_candidates", "gamma", "prior_weight"),
    "multivariate-tpe": ("random_state", "n_ei_candidates", "n_startup_trials"),
    "bayesianoptimization": ("random_state", "base_estimator", "n_initial_points"),
    "cmaes": ("random_state", "sigma", "restart_strategy"),
}
MEDIANSTOP_SETTINGS = ("min_trials_required", "start_step")


class ExperimentError(ValueError):
    """The Experiment cannot run here; the message names the field (``spec.nasConfig: ...``)."""


class _Katib(BaseModel):
    """A Katib object: every field we run is declared, anything else is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _text(value: Any) -> Any:
    """Katib's CRD types these fields as strings; a bare YAML number would be refused by the
    API server, so it is refused here too, with the fix."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"Katib's CRD takes a string here: write \"{value}\" (quoted)")
    return value


class Setting(_Katib):
    name: str
    value: str = ""

    _check_value = field_validator("value", mode="before")(_text)


class Algorithm(_Katib):
    algorithmName: str  # noqa: N815 - Katib's field names
    algorithmSettings: list[Setting] = Field(default_factory=list)  # noqa: N815


class MetricStrategy(_Katib):
    name: str
    value: Literal["min", "max", "latest"]


class Objective(_Katib):
    type: Literal["maximize", "minimize"]
    objectiveMetricName: str  # noqa: N815
    goal: float | None = None
    additionalMetricNames: list[str] = Field(default_factory=list)  # noqa: N815
    metricStrategies: list[MetricStrategy] = Field(default_factory=list)  # noqa: N815


class FeasibleSpace(_Katib):
    min: str | None = None
    max: str | None = None
    step: str | None = None
    list: tuple[str, ...] | None = None
    distribution: Literal["uniform", "logUniform", "normal", "logNormal"] | None = None

    _check_text = field_validator("min", "max", "step", mode="before")(_text)

    @field_validator("list", mode="before")
    @classmethod
    def _check_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                _text(item)
        return value


class Parameter(_Katib):
    name: str
    parameterType: Literal["int", "double", "categorical", "discrete"]  # noqa: N815
    feasibleSpace: FeasibleSpace  # noqa: N815


class TrialParameter(_Katib):
    name: str
    reference: str
    description: str = ""


class TrialTemplate(_Katib):
    primaryContainerName: str  # noqa: N815
    trialParameters: list[TrialParameter]  # noqa: N815
    trialSpec: dict[str, Any]  # noqa: N815 - a batch/v1 Job, checked in plan()
    # Kubernetes-side fields: accepted (the manifest must stay the cluster's), unused locally.
    retain: bool = False
    primaryPodLabels: dict[str, str] | None = None  # noqa: N815
    successCondition: str | None = None  # noqa: N815
    failureCondition: str | None = None  # noqa: N815


class Collector(_Katib):
    kind: Literal["StdOut"]


class MetricsCollector(_Katib):
    collector: Collector | None = None


class Spec(_Katib):
    objective: Objective
    algorithm: Algorithm
    parameters: list[Parameter]
    trialTemplate: TrialTemplate  # noqa: N815
    earlyStopping: Algorithm | None = None  # noqa: N815
    parallelTrialCount: int | None = Field(default=None, ge=1)  # noqa: N815
    maxTrialCount: int | None = Field(default=None, ge=1)  # noqa: N815
    maxFailedTrialCount: int | None = Field(default=None, ge=0)  # noqa: N815
    metricsCollectorSpec: MetricsCollector | None = None  # noqa: N815
    resumePolicy: Literal["Never", "LongRunning", "FromVolume"] | None = None  # noqa: N815


class Metadata(BaseModel):
    """Kubernetes object metadata: ``name`` is the study's; the rest is the cluster's."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    namespace: str | None = None


class Experiment(_Katib):
    apiVersion: Literal["kubeflow.org/v1beta1"]  # noqa: N815
    kind: Literal["Experiment"]
    metadata: Metadata
    spec: Spec


# ---- the plan: what a local run does ---------------------------------------------------


@dataclass(frozen=True)
class SearchParameter:
    """One Optuna distribution: ``kind`` int/float (``low``, ``high``, ``step``, ``log``) or
    categorical (``choices``: strings for categorical, numbers for discrete)."""

    name: str
    kind: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"one of {', '.join(map(str, self.choices))}"
        scale = " log" if self.log else ""
        step = f" step {format_value(self.step)}" if self.step is not None else ""
        return f"{self.kind} [{format_value(self.low)}, {format_value(self.high)}]{step}{scale}"

    def grid(self) -> list[Any]:
        """Every value a grid search tries."""
        if self.kind == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        step = self.step if self.step is not None else 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        if self.kind == "int":
            return [int(round(v)) for v in values]
        return [round(v, 12) for v in values]

    def example(self) -> Any:
        return self.choices[0] if self.kind == "categorical" else (
            int(self.low) if self.kind == "int" else self.low)


@dataclass(frozen=True)
class Plan:
    """A checked Experiment, ready to run: see :func:`plan`."""

    name: str
    direction: Literal["maximize", "minimize"]
    metric: str
    goal: float | None
    additional_metrics: tuple[str, ...]
    algorithm: str
    algorithm_settings: dict[str, str]
    early_stopping: dict[str, int] | None  # medianstop: min_trials_required, start_step
    parameters: tuple[SearchParameter, ...]
    argv: tuple[str, ...]  # the trial's arguments after ``-m upstream.tuning.trial``
    trial_parameters: dict[str, str]  # placeholder name -> search parameter name
    max_trials: int
    parallel: int
    max_failed: int | None
    framework: str
    dataset: str
    task: str
    identity: str  # a digest of what makes two runs the same study (not the counts)
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def trial_argv(self, values: Mapping[str, Any]) -> list[str]:
        """The trial's arguments with ``values`` (by search parameter) put in, as Katib would
        substitute them into the container's command."""
        by_placeholder = {f"trialParameters.{p}": format_value(values[ref])
                          for p, ref in self.trial_parameters.items()}
        return [PLACEHOLDER.sub(lambda m: by_placeholder[m.group(1)], arg) for arg in self.argv]

    def reached(self, value: float) -> bool:
        """Whether ``value`` reaches the objective's goal (none: never)."""
        if self.goal is None or value is None or math.isnan(value):
            return False
        return value >= self.goal if self.direction == "maximize" else value <= self.goal


def format_value(value: Any) -> str:
    """A parameter value as Katib writes it into the trial's command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def load_experiment(source: str | Path | Mapping[str, Any]) -> Experiment:
    """An Experiment from a YAML file, YAML text or a mapping; ExperimentError naming the
    field when it is not one Turnout runs."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
        where = "experiment"
    else:
        text, where = _read(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ExperimentError(f"{where}: not YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{where}: an Experiment is a mapping (apiVersion, kind, metadata, "
                              "spec)")
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise ExperimentError(f"{where}: " + "; ".join(_explain(e) for e in exc.errors())) from None


def _read(source: str | Path) -> tuple[str, str]:
    if isinstance(source, Path) or ("\n" not in str(source) and str(source).endswith(
            (".yaml", ".yml", ".json"))):
        path = Path(source)
        try:
            return path.read_text(), str(path)
        except OSError as exc:
            raise ExperimentError(f"cannot read {path}: {exc.strerror or exc}") from None
    return str(source), "experiment"


def _explain(error: Mapping[str, Any]) -> str:
    where = _path(error.get("loc", ()))
    if error.get("type") == "extra_forbidden":
        return (f"{where}: not supported: Turnout runs the core of a Katib Experiment "
                "(docs/tuning.md lists the fields)")
    if error.get("type") == "missing":
        return f"{where}: required"
    message = str(error.get("msg", "invalid"))
    return f"{where}: {message.removeprefix('Value error, ')}"


def _path(loc: Any) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "experiment"


def plan(experiment: Experiment) -> Plan:
    """Check what the models cannot (values, references, the trial command) and build the
    local run's :class:`Plan`. ExperimentError names the field at fault."""
    spec = experiment.spec
    parameters = tuple(_search_parameter(i, p) for i, p in enumerate(spec.parameters))
    names = [p.name for p in parameters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExperimentError(f"spec.parameters: {', '.join(duplicates)} defined twice")
    if not parameters:
        raise ExperimentError("spec.parameters: at least one parameter to search")
    algorithm = spec.algorithm.algorithmName
    settings = _settings("spec.algorithm", spec.algorithm, ALGORITHM_SETTINGS)
    _check_algorithm(algorithm, settings, parameters)
    early = _early_stopping(spec.earlyStopping)
    argv, trial_parameters, container = _trial_command(spec.trialTemplate, names)
    from upstream.tuning.trial import TrialArgs, parse_trial_argv

    example = {p.name: p.example() for p in parameters}
    fixed_argv = [PLACEHOLDER.sub(
        lambda m: format_value(example[trial_parameters[m.group(1)[len("trialParameters."):]]]),
        arg) for arg in argv]
    try:
        args: TrialArgs = parse_trial_argv(fixed_argv)
    except ValueError as exc:
        raise ExperimentError(f"{container}: {exc}") from None
    task = _task(args.dataset, container)
    _check_hyperparameters(args, task, container)
    _check_objective(spec.objective, task)
    max_trials = spec.maxTrialCount
    if max_trials is None:
        if algorithm != "grid":
            raise ExperimentError("spec.maxTrialCount: required (a local run needs a bound; "
                                  "only grid search has one of its own)")
        max_trials = math.prod(len(p.grid()) for p in parameters)
    identity = {
        "direction": spec.objective.type, "metric": spec.objective.objectiveMetricName,
        "algorithm": algorithm, "settings": settings,
        "parameters": [p.__dict__ for p in parameters], "argv": argv,
        "trialParameters": trial_parameters,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return Plan(
        name=experiment.metadata.name, direction=spec.objective.type,
        metric=spec.objective.objectiveMetricName, goal=spec.objective.goal,
        additional_metrics=tuple(spec.objective.additionalMetricNames), algorithm=algorithm,
        algorithm_settings=settings, early_stopping=early, parameters=parameters,
        argv=tuple(argv), trial_parameters=trial_parameters, max_trials=max_trials,
        parallel=spec.parallelTrialCount or DEFAULT_PARALLEL,
        max_failed=spec.maxFailedTrialCount, framework=args.framework, dataset=args.dataset,
        task=task, identity=digest.hexdigest()[:16],
        manifest=experiment.model_dump(mode="json", exclude_none=True))


def _number(where: str, text: str | None, kind: str) -> float:
    if text is None:
        raise ExperimentError(f"{where}: required for a {kind} parameter")
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise ExperimentError(f"{where}: {text!r} is not {'an integer' if kind == 'int' else 'a number'}"
                              ) from None
    if not math.isfinite(value):
        raise ExperimentError(f"{where}: {text!r} is not a finite number")
    return value


def _search_parameter(index: int, parameter: Parameter) -> SearchParameter:
    where = f"spec.parameters[{index}]"
    space = parameter.feasibleSpace
    kind = parameter.parameterType
    if space.distribution in ("normal", "logNormal"):
        raise ExperimentError(f"{where}.feasibleSpace.distribution: {space.distribution} is not "
                              "supported (Optuna samples uniform and logUniform spaces)")
    if kind in ("categorical", "discrete"):
        for key in ("min", "max", "step", "distribution"):
            if getattr(space, key) is not None:
                raise ExperimentError(f"{where}.feasibleSpace.{key}: a {kind} parameter takes "
                                      "feasibleSpace.list only")
        if not space.list:
            raise ExperimentError(f"{where}.feasibleSpace.list: required for a {kind} parameter")
        if len(set(space.list)) != len(space.list):
            raise ExperimentError(f"{where}.feasibleSpace.list: values repeat")
        if kind == "categorical":
            return SearchParameter(parameter.name, "categorical", choices=tuple(space.list))
        values = [_number(f"{where}.feasibleSpace.list", v, "double") for v in space.list]
        if all(re.fullmatch(r"[+-]?\d+", v.strip()) for v in space.list):
            values = [int(v) for v in space.list]
        return SearchParameter(parameter.name, "categorical", choices=tuple(values))
    if space.list is not None:
        raise ExperimentError(f"{where}.feasibleSpace.list: a {kind} parameter takes "
                              "feasibleSpace min, max (and step)")
    low = _number(f"{where}.feasibleSpace.min", space.min, kind)
    high = _number(f"{where}.feasibleSpace.max", space.max, kind)
    if low > high:
        raise ExperimentError(f"{where}.feasibleSpace: min {space.min} is above max {space.max}")
    step = None
    if space.step is not None:
        step = _number(f"{where}.feasibleSpace.step", space.step, kind)
        if step <= 0:
            raise ExperimentError(f"{where}.feasibleSpace.step: must be above 0")
    log = space.distribution == "logUniform"
    if log and low <= 0:
        raise ExperimentError(f"{where}.feasibleSpace.min: a logUniform space starts above 0")
    if log and step is not None:
        raise ExperimentError(f"{where}.feasibleSpace.step: cannot be combined with "
                              "distribution logUniform (Optuna samples log scales without steps)")
    return SearchParameter(parameter.name, "int" if kind == "int" else "float", low=low,
                           high=high, step=step, log=log)


def _settings(where: str, algorithm: Algorithm, known: Mapping[str, tuple[str, ...]]
              ) -> dict[str, str]:
    name = algorithm.algorithmName
    if name not in known:
        raise ExperimentError(f"{where}.algorithmName: {name!r} is not supported; Turnout runs "
                              f"{', '.join(known)}")
    settings: dict[str, str] = {}
    for i, setting in enumerate(algorithm.algorithmSettings):
        if setting.name not in known[name]:
            allowed = ", ".join(known[name]) or "none"
            raise ExperimentError(f"{where}.algorithmSettings[{i}]: setting {setting.name!r} is "
                                  f"not supported for {name} (supported: {allowed})")
        if setting.name in settings:
            raise ExperimentError(f"{where}.algorithmSettings[{i}]: {setting.name} given twice")
        settings[setting.name] = setting.value
    return settings


def _int_setting(where: str, settings: Mapping[str, str], name: str, minimum: int) -> int | None:
    if name not in settings:
        return None
    try:
        value = int(settings[name])
    except ValueError:
        raise ExperimentError(f"{where} {name}: {settings[name]!r} is not an integer") from None
    if value < minimum:
        raise ExperimentError(f"{where} {name}: must be at least {minimum}")
    return value


def _float_setting(where: str, settings: Mapping[str, str], name: str, *, low: float = 0.0,
                   high: float = math.inf) -> float | None:
    if name not in settings:
        return None
    try:
        value = float(settings[name])
    except ValueError:
        raise ExperimentError(f"{where} {name}: {settings[name]!r} is not a number") from None
    if not low < value < high:
        bound = f"between {low:g} and {high:g}" if math.isfinite(high) else f"above {low:g}"
        raise ExperimentError(f"{where} {name}: must lie {bound}")
    return value


def _check_algorithm(name: str, settings: Mapping[str, str],
                     parameters: tuple[SearchParameter, ...]) -> None:
    where = "spec.algorithm.algorithmSettings"
    _int_setting(where, settings, "random_state", 0)
    _int_setting(where, settings, "n_EI_candidates", 1)
    _int_setting(where, settings, "n_ei_candidates", 1)
    _int_setting(where, settings, "n_startup_trials", 0)
    _int_setting(where, settings, "n_initial_points", 0)
    _float_setting(where, settings, "gamma", high=1.0)
    _float_setting(where, settings, "prior_weight")
    _float_setting(where, settings, "sigma")
    estimator = settings.get("base_estimator", "GP")
    if estimator != "GP":
        raise ExperimentError(f"{where} base_estimator: {estimator!r} is not supported; Optuna's "
                              "Gaussian-process sampler is GP")
    restart = settings.get("restart_strategy", "none")
    if restart not in ("none", "ipop", "bipop"):
        raise ExperimentError(f"{where} restart_strategy: {restart!r} is not one of none, ipop, "
                              "bipop")
    if name == "grid":
        for i, p in enumerate(parameters):
            if p.log:
                raise ExperimentError(f"spec.parameters[{i}].feasibleSpace.distribution: grid "
                                      "search needs a linear scale")
            if p.kind == "float" and p.step is None:
                raise ExperimentError(f"spec.parameters[{i}].feasibleSpace.step: grid search "
                                      "needs a step for a double parameter")


def _early_stopping(early: Algorithm | None) -> dict[str, int] | None:
    if early is None:
        return None
    settings = _settings("spec.earlyStopping", early, {"medianstop": MEDIANSTOP_SETTINGS})
    where = "spec.earlyStopping.algorithmSettings"
    minimum = _int_setting(where, settings, "min_trials_required", 1)
    start = _int_setting(where, settings, "start_step", 1)
    return {"min_trials_required": 3 if minimum is None else minimum,  # Katib's defaults
            "start_step": 4 if start is None else start}


def _check_objective(objective: Objective, task: str) -> None:
    known = METRICS[task]
    names = [("spec.objective.objectiveMetricName", objective.objectiveMetricName)]
    names += [(f"spec.objective.additionalMetricNames[{i}]", n)
              for i, n in enumerate(objective.additionalMetricNames)]
    for where, name in names:
        if name not in known:
            raise ExperimentError(f"{where}: {name!r} is not a metric the training components "
                                  f"report for {task} ({', '.join(known)})")
    for i, strategy in enumerate(objective.metricStrategies):
        if strategy.value != "latest":
            raise ExperimentError(
                f"spec.objective.metricStrategies[{i}].value: {strategy.value!r} is not "
                "supported: a trial's value is its final model's metric (latest)")


def _trial_command(template: TrialTemplate, searched: list[str]
                   ) -> tuple[list[str], dict[str, str], str]:
    """The primary container's arguments after ``-m upstream.tuning.trial`` and the
    placeholders they use (name -> search parameter)."""
    where = "spec.trialTemplate"
    trial_spec = template.trialSpec
    if trial_spec.get("apiVersion") != "batch/v1" or trial_spec.get("kind") != "Job":
        raise ExperimentError(
            f"{where}.trialSpec: kind {trial_spec.get('kind')!r} ({trial_spec.get('apiVersion')}) "
            "is not supported: trials are batch/v1 Jobs running python -m upstream.tuning.trial")
    containers = (((trial_spec.get("spec") or {}).get("template") or {}).get("spec") or {}
                  ).get("containers")
    if not isinstance(containers, list) or not containers:
        raise ExperimentError(f"{where}.trialSpec.spec.template.spec.containers: required")
    index = next((i for i, c in enumerate(containers)
                  if isinstance(c, dict) and c.get("name") == template.primaryContainerName), None)
    if index is None:
        raise ExperimentError(f"{where}.primaryContainerName: no container named "
                              f"{template.primaryContainerName!r} in the trialSpec")
    container = f"{where}.trialSpec.spec.template.spec.containers[{index}]"
    command = [*(containers[index].get("command") or []), *(containers[index].get("args") or [])]
    if not all(isinstance(a, str) for a in command):
        raise ExperimentError(f"{container}: command and args are lists of strings")
    try:
        start = next(i for i in range(len(command) - 1)
                     if command[i] == "-m" and command[i + 1] == TRIAL_MODULE) + 2
    except StopIteration:
        raise ExperimentError(f"{container}: the command must run python -m {TRIAL_MODULE} (the "
                              "trial runs a Turnout training component; see docs/tuning.md)"
                              ) from None
    argv = command[start:]
    trial_parameters: dict[str, str] = {}
    for i, parameter in enumerate(template.trialParameters):
        if parameter.reference not in searched:
            raise ExperimentError(f"{where}.trialParameters[{i}].reference: "
                                  f"{parameter.reference!r} is not one of spec.parameters "
                                  f"({', '.join(searched)})")
        if parameter.name in trial_parameters:
            raise ExperimentError(f"{where}.trialParameters[{i}].name: {parameter.name} twice")
        trial_parameters[parameter.name] = parameter.reference
    used: set[str] = set()
    for arg in argv:
        for match in PLACEHOLDER.finditer(arg):
            key = match.group(1)
            if not key.startswith("trialParameters."):
                raise ExperimentError(f"{container}: placeholder ${{{key}}} is not supported "
                                      "(only ${trialParameters.NAME})")
            name = key[len("trialParameters."):]
            if name not in trial_parameters:
                raise ExperimentError(f"{container}: ${{{key}}} is not in "
                                      f"{where}.trialParameters")
            used.add(name)
    for i, parameter in enumerate(template.trialParameters):
        if parameter.name not in used:
            raise ExperimentError(f"{where}.trialParameters[{i}]: ${{trialParameters."
                                  f"{parameter.name}}} is never used in the trial's command")
    reached = set(trial_parameters[n] for n in used)
    for i, name in enumerate(searched):
        if name not in reached:
            raise ExperimentError(f"spec.parameters[{i}]: {name!r} is searched but no "
                                  "trialParameters entry passes it to the trial")
    return argv, trial_parameters, container


def _task(dataset: str, where: str) -> str:
    from upstream.datasets import DATASETS, load_dataset

    if dataset not in DATASETS:
        raise ExperimentError(f"{where}: unknown dataset {dataset!r}; known datasets: "
                              f"{', '.join(DATASETS)}")
    return load_dataset(dataset).task


def _check_hyperparameters(args: Any, task: str, where: str) -> None:
    """The framework knows every hyperparameter the command passes (checked with each
    parameter at its first value)."""
    from upstream.training.core import component_for

    try:
        component_for(args.framework).resolve(task, dict(args.params))
    except ValueError as exc:
        raise ExperimentError(f"{where}: {exc}") from None
