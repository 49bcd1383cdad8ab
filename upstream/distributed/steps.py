"""The distributed training pipeline step as a plain function (no kfp): train a configuration
on N local DDP processes into a Model artifact's folder."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def train_distributed(dataset: str, hyperparameters: Any, out_dir: str | Path, *,
                      processes: int = 2, seed: int = 0, model_name: str = "model",
                      max_restarts: int = 3, lineage: str = "{}",
                      framework: str = "torch") -> dict[str, Any]:
    """Train the torch component's network with ``hyperparameters`` (a JSON object or a
    mapping) on ``processes`` ranks; the Model artifact's metadata (framework, dataset, seed,
    metrics, params, params_json, the loss curve, world size, restarts, lineage_json)."""
    from upstream.distributed.launch import run
    from upstream.pipelines.steps import parse_hyperparameters

    if framework != "torch":
        raise ValueError(f"distributed training runs the torch component, not {framework!r}: "
                         "tune a torch trial template to train its best configuration here")
    params = parse_hyperparameters(hyperparameters)
    argv = [f"--dataset={dataset}", f"--seed={int(seed)}", f"--model-name={model_name}",
            *[f"--param={k}={json.dumps(v)}" for k, v in params.items()]]
    with tempfile.TemporaryDirectory(prefix="checkpoints-") as checkpoints:
        result = run(argv, processes=int(processes), max_restarts=int(max_restarts),
                     output=Path(out_dir), checkpoint_dir=Path(checkpoints),
                     run_id=f"{model_name}-ddp")
    training = result.training
    extra = json.loads(lineage or "{}")
    extra.update({"world_size": str(training["world_size"]),
                  "restarts": str(training["restarts"])})
    settings = json.loads((Path(out_dir) / "training.json").read_text())
    used = json.loads(json.dumps(params))
    meta = {
        "framework": "torch", "dataset": dataset, "seed": int(seed), "metrics": result.metrics,
        "params": used, "params_json": json.dumps(used, sort_keys=True),
        "model_name": model_name, "shuffle_labels": False, "loss": settings["loss"],
        "world_size": training["world_size"], "restarts": training["restarts"],
        "lineage_json": json.dumps(extra, sort_keys=True),
    }
    return json.loads(json.dumps(meta, default=str))
