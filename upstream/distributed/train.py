"""The distributed trainer: the torch training component's MLP on ``torch.distributed`` (DDP,
gloo, CPU). One process per rank, started by ``torchrun`` (a PyTorchJob's pods) or by
``turnout train`` (:mod:`upstream.distributed.launch`, the same elastic agent in process)::

    python -m upstream.distributed.train --dataset iris --param hidden=16 --param epochs=20 \\
        --output /mnt/model --checkpoint-dir /mnt/checkpoints [--register-as iris]

* ``--dataset``, ``--seed`` (0), ``--param NAME=VALUE``: the torch component's hyperparameters
  (``hidden``, ``epochs``, ``lr``, ``batch_size``), the same defaults, the same network.
* **Same global batch**: ``batch_size`` is the global batch. Every rank draws the same order
  of the training rows each epoch; a batch's rows are dealt out to the ranks (rank r takes
  rows r, r + W, ...), each rank's loss is its rows' summed loss times W over the batch's size,
  and DDP's averaging of the gradients then gives exactly the gradient of the batch's mean
  loss: W processes follow the loss curve of one, up to floating-point summation order.
* **Checkpoints**: rank 0 writes ``<checkpoint-dir>/checkpoint.pt`` after every epoch
  (network, Adam state, the shuffling generator, the loss curve), atomically. A restarted
  group (a worker died: the elastic agent restarts every rank, ``max_restarts`` times) reads it
  on rank 0 and broadcasts it, so only rank 0 needs the folder, and goes on from the next
  epoch; the curve is the uninterrupted run's. A checkpoint of another dataset, seed or
  hyperparameters is refused.
* **The model**: rank 0 writes the folder the training components write (``model.pt2`` by
  ``torch.export``, the verified signature in ``model-settings.yaml``, ``metrics.json`` on the
  test split, ``onnx/`` when the ONNX copy answers alike) into ``--output``, plus
  ``training.json`` (the loss curve, world size, restarts, the epochs it resumed from). With
  ``--register-as NAME`` it registers the folder (``--tracking-uri``, ``--alias``).

Each rank writes its process id to ``<checkpoint-dir>/rank-<r>.pid``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHECKPOINT = "checkpoint.pt"
TRAINING_FILE = "training.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise ValueError(f"the trainer's arguments: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m upstream.distributed.train", add_help=False)
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("--model-name", default="model")
    p.add_argument("--register-as", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--alias", default=None)
    p.add_argument("--lineage", default="{}", help="extra lineage tags (JSON object)")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from upstream.tuning.trial import parse_value

    args = parser().parse_args(list(argv))
    params: dict[str, Any] = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {item!r} is not NAME=VALUE")
        params[name] = parse_value(value)
    args.params = params
    try:
        lineage = json.loads(args.lineage)
    except ValueError:
        raise ValueError(f"--lineage is not a JSON object: {args.lineage!r}") from None
    if not isinstance(lineage, dict):
        raise ValueError(f"--lineage is not a JSON object: {args.lineage!r}")
    args.lineage = {str(k): str(v) for k, v in lineage.items()}
    return args


def fingerprint(dataset: str, seed: int, params: dict[str, Any]) -> str:
    return json.dumps({"dataset": dataset, "seed": seed, "params": params}, sort_keys=True,
                      default=str)


def _sum_loss(task: str) -> Any:
    import torch

    if task == "classification":
        return lambda logits, y: torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    return lambda predicted, y: ((predicted[:, 0] - y) ** 2).sum()


def train(argv: Sequence[str]) -> int:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from upstream.datasets import load_dataset
    from upstream.training import torch as component

    args = parse_args(argv)
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (args.checkpoint_dir / f"rank-{rank}.pid").write_text(f"{os.getpid()}\n")
    _init_group(dist, rank, world, restart)
    try:
        data = load_dataset(args.dataset, seed=args.seed)
        params = component.resolve(data.task, args.params)
        x, y, outputs, _ = component.tensors(data)
        loss_of = _sum_loss(data.task)
        torch.manual_seed(args.seed)
        model = component.network(data, params["hidden"], outputs)
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
        generator = torch.Generator().manual_seed(args.seed)
        key = fingerprint(data.name, args.seed, params)
        state = _load_checkpoint(args.checkpoint_dir, key) if rank == 0 else None
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
        history: list[float] = []
        resumed: list[int] = []
        start = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            history, resumed, start = list(state["history"]), list(state["resumed"]), state["epoch"]
            resumed.append(start)
            if rank == 0:
                print(f"resumed from the checkpoint after epoch {start} (restart {restart})",
                      flush=True)

        ddp = DistributedDataParallel(_Logits(torch, model))
        size, batch, epochs = len(x), params["batch_size"], params["epochs"]
        model.train()
        for epoch in range(start, epochs):
            began = time.monotonic()
            order = torch.randperm(size, generator=generator)
            total = torch.zeros(1, dtype=torch.float64)
            for first in range(0, size, batch):
                rows = order[first:first + batch]
                mine = rows[rank::world]
                optimizer.zero_grad()
                loss = loss_of(ddp(x[mine]), y[mine])
                (loss * (world / len(rows))).backward()
                optimizer.step()
                total += loss.detach().double()
            dist.all_reduce(total)
            history.append(float(total.item() / size))
            if rank == 0:
                _save_checkpoint(args.checkpoint_dir, {
                    "key": key, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                    "history": history, "resumed": resumed})
                print(f"epoch {epoch + 1}/{epochs}  loss {history[-1]:.6f}  ({world} "
                      f"process{'es' if world > 1 else ''}, {time.monotonic() - began:.2f}s)",
                      flush=True)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        _finish(args, model.eval(), data, params, {
            "loss": history, "world_size": world, "restarts": restart,
            "resumed_from": resumed, "epochs": params["epochs"]})
    return 0


def _init_group(dist: Any, rank: int, world: int, restart: int) -> None:
    """The gloo group, on a store prefix of its own for each restart: the elastic agent keeps
    its store across restarts, and a restarted rank must not find the dead ranks' addresses."""
    from datetime import timedelta

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          int(os.environ.get("MASTER_PORT", "29500")), world,
                          is_master=rank == 0 and not agent_store,
                          timeout=timedelta(seconds=300), multi_tenant=not agent_store)
    dist.init_process_group("gloo", store=dist.PrefixStore(f"turnout/attempt-{restart}", store),
                            rank=rank, world_size=world)


def _Logits(torch: Any, net: Any) -> Any:  # noqa: N802 - a class, made where torch is loaded
    """DDP runs ``forward``: this one gives the network's logits, not its served outputs."""

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, rows: Any) -> Any:
            return self.net.logits(rows)

    return Logits()


def _load_checkpoint(folder: Path, key: str) -> dict[str, Any] | None:
    import torch

    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("key") != key:
        raise ValueError(f"{path} was written for another run ({state.get('key')}); remove it "
                         "or choose another --checkpoint-dir")
    return state


def _save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    import torch

    partial = folder / f".{CHECKPOINT}.{os.getpid()}"
    torch.save(state, partial)
    os.replace(partial, folder / CHECKPOINT)


def _finish(args: argparse.Namespace, model: Any, data: Any, params: dict[str, Any],
            training: dict[str, Any]) -> None:
    """Rank 0: the servable folder, its training record, and the registration if asked."""
    from upstream.training import package

    result = package("torch", model, data, args.output, params=params,
                     model_name=args.model_name, seed=args.seed)
    (args.output / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
    shown = " ".join(f"{k}={v:.6g}" for k, v in result.metrics.items())
    print(f"model folder {args.output}: {shown}"
          + ("" if result.onnx else f" (no ONNX copy: {result.onnx_reason})"), flush=True)
    if args.register_as:
        from upstream.registry import Registry

        lineage = {"dataset": data.name, "seed": str(args.seed),
                   "world_size": str(training["world_size"]),
                   "restarts": str(training["restarts"]), **args.lineage}
        version = Registry(args.tracking_uri).register(
            args.output, args.register_as, framework="torch", metrics=result.metrics,
            params=params, lineage=lineage, alias=args.alias)
        print(f"registered {version.pinned_uri}"
              + (f", alias {args.alias} moved to it" if args.alias else ""), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return train(sys.argv[1:] if argv is None else argv)
    except Exception as exc:  # one line per rank; the agent restarts the group
        rank = os.environ.get("RANK", "0")
        text = " ".join(str(exc).split())[:400]
        print(f"upstream.distributed.train rank {rank}: {type(exc).__name__}: {text}",
              file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
