"""The four anchors added for issue 19 (Ray Serve, LitServe, BentoML, PyTriton): each app starts
from its own venv, answers one request per model and protocol with the very values the model
gives in-process, and stops without leaving a process behind.

Their venvs take minutes to build, so CI does not build them: a test runs when the anchor's
venv is already cached under ``loadtests/.anchors/`` (``python -m loadtests.anchors install``),
or builds it first when ``TURNOUT_ANCHORS=1``; otherwise it is skipped, saying so. The fast
tests below check the harness's own pieces: the value check of every probe, the torch model's
ONNX twin handed to the anchors, and the ratio table.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from loadtests import anchors, load, models, report, servers

APPS = ("rayserve", "litserve", "bentoml", "pytriton")


def _venv_or_skip(name: str) -> None:
    if anchors.is_ready(name):
        return
    if os.environ.get("TURNOUT_ANCHORS") != "1":
        pytest.skip(f"{name}'s venv is not cached (python -m loadtests.anchors install {name}, "
                    "or run with TURNOUT_ANCHORS=1)")
    try:
        anchors.ensure(name)
    except Exception as exc:  # no registry here, a wheel missing for this platform
        pytest.skip(f"{name}'s venv cannot be built here: {exc}")


def _expected(name: str, artifact: Path, batch: int) -> np.ndarray:
    out = models.load_predictor(name, artifact)(models.rows(name, batch))
    return np.asarray(out[0] if isinstance(out, list) else out)


@pytest.mark.slow
@pytest.mark.parametrize("name", APPS)
def test_anchor_app_answers_like_the_model(name: str, tmp_path: Path) -> None:
    _venv_or_skip(name)
    served = list(servers.DEFS[name].models)
    artifacts = models.build(tmp_path / "models", served)
    server = servers.start(name, tmp_path / "run", artifacts, served, None, [], tmp_path / "logs")
    try:
        server.wait_ready(served)
        assert not server.failed
        for model in served:
            expected = _expected(model, artifacts[model], 3)
            for protocol in server.defn.protocols:
                payload = servers.with_metadata(server.defn, load.build_payloads(
                    tmp_path / "payloads", model, 3)[protocol])
                port = server.grpc_port if protocol == "grpc" else server.http_port
                assert load.probe(payload, port, expected=expected) > 0, (model, protocol)
            wrong = expected + 1 if expected.dtype.kind != "f" else expected * 2 + 1
            with pytest.raises(load.ProbeMismatch):  # the check is real
                load.probe(load.build_payloads(tmp_path / "payloads", model, 3)[
                    server.defn.protocols[0]], server.http_port, expected=wrong)
    finally:
        server.stop()
    assert servers.session_pids(server.proc.pid) == []


def test_probe_value_check() -> None:
    load._check_values(np.array([1, 0, 2]), np.array([[1], [0], [2]]))
    load._check_values(np.array([0.5, 0.25], np.float32), np.array([0.50001, 0.25]))
    with pytest.raises(load.ProbeMismatch, match="differs"):
        load._check_values(np.array([1, 0, 2]), np.array([1, 1, 2]))
    with pytest.raises(load.ProbeMismatch, match="values"):
        load._check_values(np.array([0.5]), np.array([0.5, 0.5]))
    with pytest.raises(load.ProbeMismatch):
        load._check_values(None, np.array([1]))
    # labels against the model's probabilities: binary (one column) and multi-class
    load._check_values(np.array([1, 0]), np.array([0.86, 0.41], np.float32))
    load._check_values(np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]))
    with pytest.raises(load.ProbeMismatch, match="differs"):
        load._check_values(np.array([0]), np.array([0.86], np.float32))


def test_anchors_get_the_torch_models_onnx_twin(tmp_path: Path) -> None:
    artifacts = {m: tmp_path / m / models.MODELS[m].artifact for m in ("iris", "torch")}
    args = servers.anchor_model_args(artifacts, ["iris", "torch"])
    assert args == [
        f"iris=sklearn:FP64:4:{(tmp_path / 'iris' / 'model.joblib').resolve()}",
        f"torch=onnx:FP32:256:{(tmp_path / 'torch-onnx' / 'model.onnx').resolve()}"]


def test_turnouts_repository_holds_only_the_models_of_this_run(tmp_path: Path) -> None:
    """A model folder an earlier run left in the repository would be loaded and measured (a
    three-model cold start read 3.8 s and 419 MiB: the torch model of an earlier run)."""
    artifacts = {m: tmp_path / "models" / m / models.MODELS[m].artifact
                 for m in ("iris", "mlp", "torch")}
    for artifact in artifacts.values():
        artifact.parent.mkdir(parents=True)
        artifact.write_bytes(b"")
    work = tmp_path / "run"
    servers.prepare("turnout-defaults", work, artifacts, ["iris", "mlp", "torch"], 1, 2, [])
    launch = servers.prepare("turnout-defaults", work, artifacts, ["iris", "mlp"], 1, 2, [])
    repo = work / "turnout-defaults-repo"
    assert str(repo) in launch.argv
    assert sorted(p.name for p in repo.iterdir()) == ["iris", "mlp"]
    assert (repo / "iris" / "model.joblib").resolve() == artifacts["iris"].resolve()


def test_ratio_table_names_the_best_anchor() -> None:
    meta = {"kind": "meta", "models": ["iris"], "protocols": ["rest-json", "grpc"],
            "concurrency": [32, 64], "batches": [1]}

    def cell(server, protocol, rps):
        return {"kind": "load", "server": server, "model": "iris", "protocol": protocol,
                "batch": 1, "concurrency": 32, "ok": True, "rps": rps, "rows_per_s": rps,
                "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0}

    res = report.Results([meta, cell("turnout", "rest-json", 3000), cell("pytriton", "rest-json",
                          1000), cell("litserve", "rest-json", 400), cell("turnout", "grpc", 900),
                          cell("pytriton", "grpc", 1200)])
    text = "\n".join(report.ratio_table(res))
    assert "| iris | REST JSON | 3,000 | 400 | 1,000 | 3.00× (PyTriton) |" in text
    assert "| iris | gRPC | 900 | — | 1,200 | 0.75× (PyTriton) |" in text
    res = report.Results([meta, cell("turnout", "grpc", 900), cell("turnout-defaults", "grpc", 600),
                          cell("pytriton", "grpc", 1200)])
    text = "\n".join(report.ratio_table(res))
    assert "| iris | gRPC | 900 | 600 | 1,200 | 0.75× (PyTriton) | 0.50× |" in text
