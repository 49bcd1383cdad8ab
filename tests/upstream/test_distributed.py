"""Distributed training for real, on digits (1347 training rows, batches of 32): 2 DDP processes
follow 1 process's loss curve with the same global batch; a worker killed mid-epoch costs a
restart from the last checkpoint and nothing else (the curve is the uninterrupted run's); the
packaged folder, served by a real ``turnout serve``, answers like the trained network in
process; 1 process equals the torch training component itself."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

import tests.conftest as SHARED  # noqa: E402 - the real server process
from serving.protocol.datatypes import dtype_for  # noqa: E402
from upstream.datasets import load_dataset  # noqa: E402
from upstream.distributed import DistributedResult, run  # noqa: E402
from upstream.distributed.train import CHECKPOINT  # noqa: E402
from upstream.training import predict_in_process, train  # noqa: E402

PARAMS = {"hidden": 32, "epochs": 8, "lr": 0.005, "batch_size": 32}
ARGV = ["--dataset=digits", "--seed=1", "--model-name=digits",
        *[f"--param={k}={v}" for k, v in PARAMS.items()]]
ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def launch(root: Path, processes: int, *, max_restarts: int = 0) -> DistributedResult:
    return run(ARGV, processes=processes, max_restarts=max_restarts, output=root / "model",
               checkpoint_dir=root / "checkpoints", run_id=f"digits-{processes}",
               echo=lambda line: None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DistributedResult]:
    base = tmp_path_factory.mktemp("distributed")
    return {"two": launch(base / "two", 2), "one": launch(base / "one", 1)}


def test_two_processes_follow_the_loss_curve_of_one(runs: dict[str, Any]) -> None:
    two, one = runs["two"].training, runs["one"].training
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert len(two["loss"]) == len(one["loss"]) == PARAMS["epochs"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4)
    assert two["loss"][-1] < two["loss"][0] / 5  # it learned
    assert abs(runs["two"].metrics["accuracy"] - runs["one"].metrics["accuracy"]) <= 2 / 450


def test_one_process_is_the_training_component(runs: dict[str, Any], tmp_path: Path) -> None:
    component = train("torch", "digits", tmp_path / "component", params=PARAMS, seed=1)
    x = load_dataset("digits", seed=1).X_test
    ours, theirs = predict_in_process(runs["one"].folder, x), predict_in_process(
        component.folder, x)
    np.testing.assert_allclose(ours["predict_proba"], theirs["predict_proba"], rtol=1e-4,
                               atol=1e-5)


def test_a_worker_killed_mid_epoch_resumes_from_the_checkpoint(runs: dict[str, Any],
                                                               tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    seen: dict[str, int] = {}

    def kill_rank_1() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.01)
            try:
                epoch = torch.load(checkpoints / CHECKPOINT, weights_only=True)["epoch"]
                pid = int((checkpoints / "rank-1.pid").read_text())
            except Exception:  # not written yet
                continue
            if epoch >= 2:
                seen.update(epoch=epoch, pid=pid)
                os.kill(pid, signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_rank_1, daemon=True)
    killer.start()
    result = run(ARGV, processes=2, max_restarts=2, output=tmp_path / "model",
                 checkpoint_dir=checkpoints, run_id="digits-killed", echo=lambda line: None)
    killer.join(timeout=5)
    assert seen, "rank 1 was never killed"
    training = result.training
    assert training["restarts"] == 1
    assert len(training["resumed_from"]) == 1
    # resumed from the last epoch finished before the kill: the one in progress was redone
    assert seen["epoch"] <= training["resumed_from"][0] < PARAMS["epochs"]
    assert any("restarting every rank" in line for line in result.lines)
    assert len(training["loss"]) == PARAMS["epochs"]
    np.testing.assert_allclose(training["loss"], runs["two"].training["loss"], rtol=1e-6)
    assert int((checkpoints / "rank-1.pid").read_text()) != seen["pid"]  # a new rank 1


def test_the_served_model_answers_like_the_trained_one(runs: dict[str, Any]) -> None:
    folder = runs["two"].folder
    settings = yaml.safe_load((folder / "model-settings.yaml").read_text())
    assert settings["runtime"] == "torch" and (folder / "model.pt2").is_file()
    assert (folder / "metrics.json").is_file() and (folder / "onnx" / "model.onnx").is_file()
    x = load_dataset("digits", seed=1).X_test[:64]
    expected = predict_in_process(folder, x)
    spec = settings["inputs"][0]
    server = SHARED.ServerProcess(folder)
    try:
        server.wait_ready(timeout=120)
        body = {"inputs": [{"name": spec["name"], "shape": list(x.shape),
                            "datatype": spec["datatype"],
                            "data": x.astype(dtype_for(spec["datatype"])).ravel().tolist()}],
                "outputs": [{"name": o["name"]} for o in settings["outputs"]]}
        response = httpx.post(f"{server.url}/v2/models/{settings['name']}/infer", json=body,
                              timeout=30)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    got = {o["name"]: np.asarray(o["data"], dtype=dtype_for(o["datatype"])).reshape(o["shape"])
           for o in response.json()["outputs"]}
    assert sorted(got) == sorted(expected)
    np.testing.assert_array_equal(got["predict"], expected["predict"])
    np.testing.assert_allclose(got["predict_proba"], expected["predict_proba"], rtol=1e-6,
                               atol=1e-7)
