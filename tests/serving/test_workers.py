"""--workers N: every worker serves, metrics add up across workers, SIGTERM drains them all."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from serving.server.process import METRICS_FLUSH_SECONDS

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}


def _requests_by_pid(folder: Path) -> dict[str, float]:
    """Successful iris requests recorded in each worker's own metrics file."""
    counts: dict[str, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = path.stem.split("_")[1]
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if '"turnout_requests_total"' in key and '"success"' in key and '"iris"' in key:
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def test_workers_share_ports_and_aggregate_metrics(model_zoo, tmp_path, start_server,
                                                   monkeypatch):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    root = tmp_path / "repo"
    for name in ("iris", "xgb", "mlp"):
        shutil.copytree(model_zoo["root"] / name, root / name)
    srv = start_server(root, "--workers", "2", "--grpc-port", "0")
    x = np.random.default_rng(0).normal(size=(4, 4))
    for _ in range(60):  # a fresh connection each time, so the kernel spreads them
        r = httpx.post(f"{srv.url}/v2/models/iris/infer",
                       json={"inputs": [{"name": "x", "shape": [4, 4], "datatype": "FP64",
                                         "data": x.ravel().tolist()}]})
        assert r.status_code == 200
        assert r.json()["outputs"][0]["data"] == model_zoo["iris_v2"].predict(x).tolist()
    for model, width in (("xgb", 32), ("mlp", 8)):
        r = httpx.post(f"{srv.url}/v2/models/{model}/infer", json={"inputs": [
            {"name": "x", "shape": [1, width], "datatype": "FP32", "data": [0.5] * width}]})
        assert r.status_code == 200, r.text
    # Each worker moves its counts into its file at least every METRICS_FLUSH_SECONDS.
    deadline = time.monotonic() + 10 * METRICS_FLUSH_SECONDS
    while True:
        per_worker = _requests_by_pid(metrics_dir)
        if sum(per_worker.values()) == 60 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker
    assert sum(per_worker.values()) == 60
    text = httpx.get(f"{srv.url}/metrics").text
    total = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "turnout_requests_total" and s.labels["model"] == "iris")
    assert total == 60
    refused = httpx.post(f"{srv.url}/v2/repository/models/iris/unload")
    assert refused.status_code == 400
    assert "--workers" in refused.json()["error"]


def _in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "turnout_requests_in_flight")


def test_sigterm_to_the_supervisor_drains_every_worker(model_zoo, tmp_path, start_server):
    root = tmp_path / "repo"
    shutil.copytree(model_zoo["root"] / "slow", root / "slow")
    srv = start_server(root, "--workers", "2", "--grpc-port", "0", "--inference-threads", "8")
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    codes: list[int] = []

    def call() -> None:
        codes.append(httpx.post(f"{srv.url}/v2/models/slow/infer", json=body,
                                timeout=30).status_code)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while _in_flight(srv.url) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)  # until every request is inside predict, in one worker or the other
    assert _in_flight(srv.url) == 10
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert srv.proc.wait(30) == 0
    assert codes == [200] * 10
    assert srv.log().count("SIGTERM received: draining") == 2
    assert "all workers stopped" in srv.log()


def test_each_worker_mints_its_own_request_ids(model_zoo, tmp_path, start_server):
    """Requests without X-Request-Id get ids for their log lines; workers fork after the id
    generator is imported, and must not hand out the same ids as each other."""
    root = tmp_path / "repo"
    shutil.copytree(model_zoo["root"] / "failing", root / "failing")
    srv = start_server(root, "--workers", "2", "--grpc-port", "0", "--log-format", "json")
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    n = 40
    for _ in range(n):  # a fresh connection each time, so the kernel spreads them
        r = httpx.post(f"{srv.url}/v2/models/failing/infer", json=body)
        assert r.status_code == 500  # logged, with the request's id, by the worker
    deadline = time.monotonic() + 10
    while True:
        lines = [orjson.loads(line) for line in srv.log().splitlines()
                 if line.startswith("{")]
        ids = [doc["request_id"] for doc in lines
               if "failed during predict" in doc["message"]]
        if len(ids) == n or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(ids) == n and "-" not in ids
    assert len(set(ids)) == n, sorted(ids)
    # both workers served, each with a prefix of its own
    assert len({rid.rsplit("-", 1)[0] for rid in ids}) == 2, sorted(ids)


def test_request_id_prefix_is_made_again_in_a_forked_child():
    from serving.server.rest import infer

    read, write = os.pipe()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # the child: report its first two ids and leave without cleanup
            os.write(write, f"{infer.new_request_id()} {infer.new_request_id()}\n".encode())
            os._exit(0)
        children.append(pid)
    os.close(write)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    with os.fdopen(read) as pipe:
        got = pipe.read().split()
    mine = [infer.new_request_id() for _ in range(2)]
    assert len(got) == 4
    assert len(set(got + mine)) == 6, (got, mine)
