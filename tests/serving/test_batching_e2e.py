"""Adaptive batching through a real server: concurrent clients get exactly their own rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families


def _mlp(model_zoo, x):
    w1, w2 = model_zoo["mlp"]
    logits = np.maximum(x @ w1, 0) @ w2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and s.labels.get("model") == "mlp_batched")


def test_concurrent_requests_are_batched_and_split_exactly(server, model_zoo):
    rng = np.random.default_rng(11)
    inputs = [rng.normal(size=(int(rng.integers(1, 5)), 8)).astype(np.float32) for _ in range(48)]
    calls_before = _metric(server.url, "turnout_batch_size_rows_count")

    def call(i: int) -> tuple[int, np.ndarray]:
        x = inputs[i]
        body = {"id": str(i), "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                          "data": x.ravel().tolist()}]}
        r = httpx.post(f"{server.url}/v2/models/mlp_batched/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        doc = r.json()
        out = doc["outputs"][0]
        return int(doc["id"]), np.array(out["data"], dtype=np.float32).reshape(out["shape"])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(48)))
    for i, output in results:
        np.testing.assert_allclose(output, _mlp(model_zoo, inputs[i]), rtol=1e-4, atol=1e-6)
    merged_calls = _metric(server.url, "turnout_batch_size_rows_count") - calls_before
    assert 0 < merged_calls < 48  # fewer predict calls than requests: they were merged
    assert _metric(server.url, "turnout_batch_size_rows_sum") >= sum(len(x) for x in inputs)


def test_server_wide_batching_flag_batches_models_without_settings(model_zoo, tmp_path,
                                                                   start_server):
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(model_zoo["root"] / "mlp", root / "mlp")
    srv = start_server(root, "--max-batch-size", "16", "--max-batch-latency-ms", "20")
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(2, 8)).astype(np.float32) for _ in range(24)]

    def call(x):
        body = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = httpx.post(f"{srv.url}/v2/models/mlp/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 3)

    with ThreadPoolExecutor(12) as pool:
        outputs = list(pool.map(call, inputs))
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out, _mlp(model_zoo, x), rtol=1e-4, atol=1e-6)
    text = httpx.get(f"{srv.url}/metrics").text
    calls = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "turnout_batch_size_rows_count" and s.labels.get("model") == "mlp")
    assert 0 < calls < 24
