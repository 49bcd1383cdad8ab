"""Run a distributed training job on this machine: N trainer processes under PyTorch's elastic
agent (``torch.distributed.launcher.elastic_launch``, what ``torchrun`` runs), in this process.

The agent starts every rank as ``python -m upstream.distributed.train ...`` (the PyTorchJob's
own command) with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` and
``TORCHELASTIC_RESTART_COUNT`` set, rendezvous on a c10d store on a free loopback port. When a
rank dies (killed, out of memory, an error), the agent stops the others and starts the whole
group again, up to ``max_restarts`` times; the trainer resumes from its last checkpoint. The
ranks print on this process's stdout/stderr (rank 0 prints one line per epoch).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("turnout.upstream.distributed")
TRAINER = "upstream.distributed.train"  # not imported here: python -m runs it fresh
TRAINING_FILE = "training.json"  # what the trainer writes beside the model


class DistributedError(RuntimeError):
    """The job failed after its restarts; the message says which rank and why."""


@dataclass(frozen=True)
class DistributedResult:
    folder: Path
    checkpoint_dir: Path
    metrics: dict[str, float]
    training: dict[str, Any]          # training.json: loss curve, world size, restarts...
    seconds: float
    lines: list[str] = field(default_factory=list)  # what the agent reported (restarts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _AgentLines(logging.Handler):
    """The elastic agent's restarts, as one line each."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.echo = echo
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "will restart worker group" not in str(record.msg) or len(record.args or ()) < 4:
            return
        _, state, left, total = tuple(record.args)[:4]  # type: ignore[misc]
        text = (f"worker group {str(state).lower()}: restarting every rank from the last "
                f"checkpoint (restart {int(total) - int(left) + 1} of {total})")
        self.lines.append(text)
        self.echo(text)


def run(argv: Sequence[str], *, processes: int, max_restarts: int, output: Path,
        checkpoint_dir: Path, run_id: str = "turnout", log_dir: Path | None = None,
        echo: Callable[[str], None] | None = None) -> DistributedResult:
    """Run the trainer with ``argv`` (without ``--output``/``--checkpoint-dir``, which are
    given here) as ``processes`` ranks; the packaged model folder and its training record."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    say = echo or (lambda text: print(text, flush=True))
    output, checkpoint_dir = Path(output).absolute(), Path(checkpoint_dir).absolute()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    full = [*argv, "--output", str(output), "--checkpoint-dir", str(checkpoint_dir)]
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"{run_id}-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_configs={"timeout": 120}, max_restarts=max_restarts, monitor_interval=0.2,
        start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=str(log_dir) if log_dir else None))
    agent_log = logging.getLogger("torch.distributed.elastic.agent.server.api")
    lines = _AgentLines(say)
    level, propagate = agent_log.level, agent_log.propagate
    agent_log.addHandler(lines)
    agent_log.setLevel(logging.INFO)
    agent_log.propagate = False  # its INFO chatter stays off the terminal
    say(f"{run_id}: {processes} process{'es' if processes > 1 else ''} (gloo), up to "
        f"{max_restarts} restart{'s' if max_restarts != 1 else ''}, checkpoints in "
        f"{checkpoint_dir}")
    started = time.monotonic()
    try:
        elastic_launch(config, sys.executable)("-m", TRAINER, *full)
    except ChildFailedError as exc:
        raise DistributedError(_failure(exc, max_restarts)) from None
    finally:
        agent_log.removeHandler(lines)
        agent_log.setLevel(level)
        agent_log.propagate = propagate
    seconds = time.monotonic() - started
    training = json.loads((output / TRAINING_FILE).read_text())
    metrics = json.loads((output / "metrics.json").read_text())
    return DistributedResult(folder=output, checkpoint_dir=checkpoint_dir, metrics=metrics,
                             training=training, seconds=seconds, lines=lines.lines)


def _failure(exc: Any, max_restarts: int) -> str:
    failures = getattr(exc, "failures", {}) or {}
    parts = []
    for rank, failure in sorted(failures.items()):
        code = getattr(failure, "exitcode", None)
        signal_name = ""
        if isinstance(code, int) and code < 0:
            import signal

            try:
                signal_name = f" ({signal.Signals(-code).name})"
            except ValueError:
                signal_name = ""
        parts.append(f"rank {rank} exited with {code}{signal_name}")
    what = "; ".join(parts) or str(exc).splitlines()[0]
    return f"the training job failed after {max_restarts} restart(s): {what}"
