"""Load a pipeline from a Python file, run it locally with kfp.local, compile it to KFP IR YAML.

Local runs use ``kfp.local.SubprocessRunner(use_venv=False)``: every task is a child process of
this Python (``python -m kfp.dsl.executor_main``), so tasks see the packages installed here and
the images named by the components are not used.

Progress: kfp.local reports on the *root* logger, inside its own ``local_logger_context`` (which
swaps the root handlers for a stdout handler and sets INFO), with messages such as ``Executing
task 'x'``, ``Task 'x' finished with status SUCCESS``, ``Task 'x' outputs: ...``, ``Skipping
conditional task condition-1 (condition evaluated to False)`` (logged outside that context, at
INFO) and ``Skipping task x: upstream task(s) [...] failed.``. Each task's own output is
streamed with ``print`` to ``sys.stdout``. :func:`run_pipeline` puts a filter on the root
logger that turns those records into :class:`TaskReport` events (and swallows them), and points
``sys.stdout`` at a sink that keeps each task's output for its log file. Tasks inside a skipped
condition are reported one by one, from the pipeline spec.

One kfp.local bug is worked around during a run: its condition evaluator resolves
``pipelinechannel--<task>-<output>`` only for single-output tasks (``<task>-Output``), so a gate
on a named output (``dsl.If(task.outputs["passed"] == True)``) logs "Could not resolve" and is
always false. The run resolves such channels as task outputs first (output names are Python
identifiers, so the last ``-`` splits task and output).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEFAULT_ROOT = Path(".turnout") / "pipeline-runs"
LOG_DIR = "logs"  # <run folder>/logs/<task>.log

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"^Executing task '(?P<task>[^']+)'$")
_FINISHED = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_OUTPUTS = re.compile(r"^Task '(?P<task>[^']+)' outputs:\n(?P<body>.*)$", re.S)
_NO_OUTPUTS = re.compile(r"^Task '(?P<task>[^']+)' has no outputs$")
_SKIPPED_CONDITION = re.compile(r"^Skipping conditional task (?P<task>\S+) \((?P<why>[^)]*)\)")
_SKIPPED_UPSTREAM = re.compile(r"^Skipping task (?P<task>[^:\s]+): upstream task\(s\) "
                               r"(?P<deps>.*) failed")
_OUTPUT_LINE = re.compile(r"^    (?P<key>\w+): (?P<value>.*)$")
_ARTIFACT_VALUE = re.compile(r"^[A-Z]\w*\( name=")
_NOISE = ("Running pipeline:", "Streamed logs:", "Pipeline ", "Cleaned up workspace:")
_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w]+\.)*\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")

PARAMETER_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool,
                   "List": list, "Dict": dict}


class PipelineError(Exception):
    """A pipeline file, pipeline name or argument that cannot be used; one line for users."""


# ---- loading ------------------------------------------------------------------------------

def load_pipeline(path: str | Path, name: str | None = None) -> Any:
    """The ``@dsl.pipeline`` function defined in the Python file ``path`` (a kfp
    ``GraphComponent``): the only one, or the one whose variable or pipeline name is ``name``."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file")
    if path.suffix != ".py":
        raise PipelineError(f"{path}: not a Python file (a .py file defining a @dsl.pipeline)")
    try:
        from kfp.dsl.graph_component import GraphComponent
    except ImportError:
        raise PipelineError("kfp is not installed (pip install 'turnout[pipelines]')") from None
    module = _import_file(path)
    found = {attr: value for attr, value in vars(module).items()
             if isinstance(value, GraphComponent)}
    if not found:
        raise PipelineError(f"{path}: defines no @dsl.pipeline function")
    if name is not None:
        chosen = [v for attr, v in found.items() if name in (attr, v.name)]
        if not chosen:
            raise PipelineError(f"{path}: no pipeline named {name!r}; it defines "
                                f"{_describe(found)}")
        return chosen[0]
    own = {attr: v for attr, v in found.items()
           if getattr(v.pipeline_func, "__module__", None) == module.__name__}
    candidates = own or found
    if len(candidates) > 1:
        raise PipelineError(f"{path}: defines several pipelines ({_describe(candidates)}); "
                            "choose one with --pipeline NAME")
    return next(iter(candidates.values()))


def _describe(found: Mapping[str, Any]) -> str:
    return ", ".join(attr if v.name == attr else f"{attr} ({v.name})" for attr, v in found.items())


def _import_file(path: Path) -> Any:
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_turnout_pipeline_{stem}_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PipelineError(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # as `python FILE` would: sibling modules import
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # kfp's default base_image notice
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise PipelineError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PipelineError(f"{path}: importing it failed: {type(exc).__name__}: "
                            f"{_one_line(str(exc))}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


def _one_line(text: str) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return " ".join(lines)[:500] if lines else ""


# ---- parameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Parameter:
    name: str
    type: str      # kfp's parameter type: String, Integer, Float, Boolean, List, Dict
    default: Any
    required: bool


def parameters(pipeline: Any) -> dict[str, Parameter]:
    """The pipeline's parameters, in order, with kfp's types and defaults."""
    found = {}
    for name, spec in (pipeline.component_spec.inputs or {}).items():
        found[name] = Parameter(name, str(spec.type), spec.default,
                                not spec.optional and spec.default is None)
    return found


def parse_arguments(pipeline: Any, pairs: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings as the pipeline's typed arguments (``true``/``false`` for
    booleans, JSON for lists and dicts). Unknown names and missing required ones are errors."""
    known = parameters(pipeline)
    arguments: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise PipelineError(f"--param {pair!r}: write NAME=VALUE")
        if name not in known:
            raise PipelineError(f"unknown parameter {name!r} of pipeline {pipeline.name!r}; it "
                                f"takes {', '.join(known) or 'none'}")
        arguments[name] = convert(known[name], text)
    missing = [p.name for p in known.values() if p.required and p.name not in arguments]
    if missing:
        raise PipelineError(f"pipeline {pipeline.name!r} needs --param for "
                            f"{', '.join(missing)}")
    return arguments


def convert(parameter: Parameter, text: str) -> Any:
    kind = parameter.type
    try:
        if kind == "Integer":
            return int(text)
        if kind == "Float":
            return float(text)
        if kind == "Boolean":
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError("not true or false")
        if kind in ("List", "Dict"):
            value = json.loads(text)
            if not isinstance(value, PARAMETER_TYPES[kind]):
                raise ValueError(f"not a JSON {'array' if kind == 'List' else 'object'}")
            return value
    except ValueError as exc:
        raise PipelineError(f"parameter {parameter.name} is {kind}: {text!r} is not one "
                            f"({exc})") from None
    if kind == "String":
        return text
    raise PipelineError(f"parameter {parameter.name} is an input artifact ({kind}); "
                        "it cannot be given on the command line")


# ---- running ------------------------------------------------------------------------------

@dataclass
class TaskReport:
    """One task of a local run, as it stands."""

    name: str
    state: str = "running"  # running, succeeded, failed, skipped
    seconds: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # parameter outputs, as kfp shows them
    reason: str = ""  # why it was skipped, or the error line of a failed task
    log: Path | None = None
    started: float = 0.0


@dataclass
class RunResult:
    pipeline: str
    succeeded: bool
    seconds: float
    tasks: dict[str, TaskReport]
    run_dir: Path | None  # <root>/<pipeline>-<timestamp>: each task's outputs and logs
    error: str = ""  # one line when the run failed
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TaskReport]:
        return [t for t in self.tasks.values() if t.state == "failed"]


EventHandler = Callable[[TaskReport], None]


def run_pipeline(pipeline: Any, arguments: Mapping[str, Any] | None = None, *,
                 root: str | Path = DEFAULT_ROOT, on_event: EventHandler | None = None,
                 echo: TextIO | None = None) -> RunResult:
    """Run ``pipeline`` locally, every task a subprocess of this Python, outputs under
    ``root``. ``on_event`` hears each task start, finish and skip; ``echo``, if given, gets the
    tasks' own output as it is printed (it also goes to ``<run>/logs/<task>.log``)."""
    import kfp.local

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    watcher = _Watcher(pipeline.pipeline_spec, on_event, echo)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   raise_on_error=True)
    error = ""
    start = time.monotonic()
    with watcher.watching():
        try:
            pipeline(**dict(arguments or {}))
        except Exception as exc:  # kfp raises RuntimeError naming the failed task
            error = _one_line(str(exc)) or type(exc).__name__
    seconds = time.monotonic() - start
    run_dir = _run_dir(root, before, pipeline.pipeline_spec.pipeline_info.name)
    watcher.write_logs(run_dir)
    failed = [t for t in watcher.tasks.values() if t.state == "failed"]
    if failed:
        first = failed[0]
        error = f"task {first.name} failed" + (f": {first.reason}" if first.reason else "")
        if first.log is not None:
            error += f" (log: {first.log})"
    for task in watcher.tasks.values():
        if task.state == "running":  # kfp stopped without saying how it ended
            task.state = "failed"
            watcher.emit(task)
    return RunResult(pipeline=pipeline.name, succeeded=not error, seconds=seconds,
                     tasks=dict(watcher.tasks), run_dir=run_dir, error=error,
                     warnings=list(watcher.warnings))


def _run_dir(root: Path, before: set[Path], pipeline_name: str) -> Path | None:
    made = [p for p in set(root.iterdir()) - before if p.is_dir() and p.name.startswith(pipeline_name)]
    return max(made, key=lambda p: p.stat().st_mtime) if made else None


class _Sink(io.TextIOBase):
    """``sys.stdout`` during a run: kfp prints each task's output here (indented by 4)."""

    def __init__(self, watcher: _Watcher) -> None:
        self._watcher = watcher

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._watcher.output(text)
        return len(text)


class _Watcher(logging.Filter):
    def __init__(self, spec: Any, on_event: EventHandler | None, echo: TextIO | None) -> None:
        super().__init__()
        self.tasks: dict[str, TaskReport] = {}
        self.warnings: list[str] = []
        self._on_event = on_event
        self._echo = echo
        self._logs: dict[str, list[str]] = {}
        self._current: str | None = None
        self._pending: str | None = None
        self._groups = _condition_groups(spec)

    # -- installing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        root = logging.getLogger()
        level = root.level
        root.addFilter(self)
        root.setLevel(logging.INFO)  # skips are logged at INFO outside kfp's own context
        try:
            with contextlib.redirect_stdout(_Sink(self)), _named_outputs_in_conditions(), \
                    warnings.catch_warnings():
                # The subprocess runner warns about every image without "python" in its name:
                # locally the image is not used.
                warnings.filterwarnings("ignore", message=r".*non-Python base image",
                                        category=RuntimeWarning)
                yield
        finally:
            root.removeFilter(self)
            root.setLevel(level)
            self.flush()

    # -- kfp's records ----------------------------------------------------------------------
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        try:
            self._record(_ANSI.sub("", record.getMessage()), record.levelno)
        except Exception as exc:  # a progress line must never break a run
            self.warnings.append(f"progress: {type(exc).__name__}: {exc}")
        return False

    def _record(self, message: str, level: int) -> None:
        if match := _OUTPUTS.match(message):
            task = self._task(match["task"])
            for line in match["body"].splitlines():
                if (out := _OUTPUT_LINE.match(line)) and not _ARTIFACT_VALUE.match(out["value"]):
                    value = out["value"]
                    task.outputs[out["key"]] = value[1:-1] if value[:1] == value[-1:] == "'" \
                        else value
            self.flush()
            return
        if _NO_OUTPUTS.match(message):
            self.flush()
            return
        self.flush()
        if match := _STARTED.match(message):
            self._start(match["task"])
        elif match := _FINISHED.match(message):
            self._finish(match["task"], match["status"])
        elif match := _SKIPPED_CONDITION.match(message):
            name = match["task"]
            label, inner = self._groups.get(name, (name, [name]))
            for leaf in inner:
                self._skip(leaf, f"{label} is false" if label else match["why"])
        elif match := _SKIPPED_UPSTREAM.match(message):
            deps = [d.strip(" '") for d in match["deps"].strip("[]").split(",") if d.strip()]
            failed = [d for d in deps if d in self.tasks and self.tasks[d].state == "failed"]
            why = f"{', '.join(failed)} failed" if failed else f"{', '.join(deps)} did not run"
            _, inner = self._groups.get(match["task"], ("", [match["task"]]))
            for leaf in inner:
                self._skip(leaf, why)
        elif level >= logging.WARNING and not message.startswith(_NOISE):
            self.warnings.append(message)
            self.output(f"warning: {message}\n")
        elif not message.startswith(_NOISE):
            self.output(message + "\n")

    def _task(self, name: str) -> TaskReport:
        if name not in self.tasks:
            self.tasks[name] = TaskReport(name)
        return self.tasks[name]

    def _start(self, name: str) -> None:
        task = self._task(name)
        task.state, task.started, task.seconds, task.reason = "running", time.monotonic(), None, ""
        task.outputs = {}
        self._current = name
        self._logs.setdefault(name, [])
        self.emit(task)

    def _finish(self, name: str, status: str) -> None:
        task = self._task(name)
        task.seconds = time.monotonic() - task.started if task.started else None
        task.state = "succeeded" if status == "SUCCESS" else "failed"
        self._current = None
        if task.state == "failed":
            task.reason = _error_line("".join(self._logs.get(name, [])))
            self.emit(task)
        else:  # reported with its outputs: kfp logs them (or "has no outputs") next
            self._pending = name

    def flush(self) -> None:
        """Report a finished task whose outputs record has not come (or just came)."""
        if self._pending is not None:
            name, self._pending = self._pending, None
            self.emit(self.tasks[name])

    def _skip(self, name: str, reason: str) -> None:
        task = self._task(name)
        task.state, task.reason = "skipped", reason
        self.emit(task)

    def emit(self, task: TaskReport) -> None:
        if self._on_event is not None:
            self._on_event(task)

    # -- task output ------------------------------------------------------------------------
    def output(self, text: str) -> None:
        if self._current is not None:
            self._logs[self._current].append(text)
        if self._echo is not None:
            self._echo.write(text)
            self._echo.flush()

    def write_logs(self, run_dir: Path | None) -> None:
        if run_dir is None:
            return
        folder = run_dir / LOG_DIR
        for name, chunks in self._logs.items():
            with contextlib.suppress(OSError):
                folder.mkdir(exist_ok=True)
                path = folder / f"{name}.log"
                path.write_text("".join(chunks))
                self.tasks[name].log = path


def _error_line(log: str) -> str:
    """The last ``SomeError: message`` line of a task's output (its traceback's last line)."""
    for line in reversed(log.splitlines()):
        if _EXCEPTION_LINE.match(line) and not line.lstrip().startswith("["):
            return line.strip()[:500]
    return ""


def _condition_groups(spec: Any) -> dict[str, tuple[str, list[str]]]:
    """For each condition (sub-DAG) task: its display name ("metric-gate") and the component
    tasks inside it, in run order; kfp.local reports only the condition as skipped."""
    components = dict(spec.components.items())
    groups: dict[str, tuple[str, list[str]]] = {}

    def leaves(dag: Any) -> list[str]:
        found: list[str] = []
        for name in _ordered(dag.tasks):
            task = dag.tasks[name]
            component = components.get(task.component_ref.name)
            if component is not None and component.WhichOneof("implementation") == "dag":
                inner = leaves(component.dag)
                label = task.task_info.name if task.task_info.name != name else ""
                groups[name] = (label, inner)
                found += inner
            else:
                found.append(name)
        return found

    leaves(spec.root.dag)
    return groups


def _ordered(tasks: Mapping[str, Any]) -> list[str]:
    """Task names with every task after the tasks it depends on."""
    done: list[str] = []

    def visit(name: str, seen: frozenset[str]) -> None:
        if name in done or name in seen or name not in tasks:
            return
        for dep in tasks[name].dependent_tasks:
            visit(dep, seen | {name})
        done.append(name)

    for name in tasks:
        visit(name, frozenset())
    return done


@contextlib.contextmanager
def _named_outputs_in_conditions() -> Iterator[None]:
    """kfp.local's condition evaluator, resolving ``<task>-<output>`` channels as task outputs
    (see the module docstring); nothing is changed if kfp's internals are not as expected."""
    try:
        from kfp.local.orchestrator.enhanced_dag_orchestrator import ConditionEvaluator

        original = ConditionEvaluator.__dict__["_resolve_pipeline_channel"].__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.replace("pipelinechannel--", "", 1)
        if "--" not in ref and "-" in ref:
            task, key = ref.rsplit("-", 1)
            try:
                return io_store.get_task_output(task, key)
            except Exception:  # not a task output here: a parent input, as kfp assumes
                pass
        return original(channel_ref, io_store)

    ConditionEvaluator._resolve_pipeline_channel = staticmethod(resolve)
    try:
        yield
    finally:
        ConditionEvaluator._resolve_pipeline_channel = staticmethod(original)


# ---- compiling ----------------------------------------------------------------------------

def compile_pipeline(pipeline: Any, out: str | Path) -> Path:
    """Compile to KFP IR YAML (what a KFP cluster runs; ``kfp.components.load_component_from_file``
    loads it back)."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return out
