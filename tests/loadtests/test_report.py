"""The harness's report: medians, ratios to the best anchor and to the bare servers, targets."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from loadtests import report


def _load(server, protocol, rps, p99, rep=0, model="mlp", batch=1, conc=32, errors=0):
    return {"kind": "load", "server": server, "model": model, "protocol": protocol,
            "batch": batch, "concurrency": conc, "rep": rep, "ok": True, "rps": rps,
            "rows_per_s": rps * batch, "p50_ms": p99 / 3, "p99_ms": p99, "errors": errors}


def _write(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "results" / "run-test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


META = {"kind": "meta", "t": 0, "models": ["mlp"], "protocols": ["rest-json", "grpc"],
        "concurrency": [32, 64], "batches": [1], "reps": 3, "duration_s": 1.5, "warmup_s": 0.3,
        "pinned": True, "server_cpu": 0, "load_cpu": 1, "versions": {}, "machine": {}}


def test_medians_and_ratios(tmp_path: Path) -> None:
    records = [META]
    for rep, (t, m, k, b) in enumerate([(5000, 900, 1000, 6000), (5200, 1100, 1200, 5800),
                                         (4800, 800, 1100, 6100)]):
        records += [_load("turnout", "rest-json", t, 10, rep), _load("mlserver", "rest-json", m, 40, rep),
                    _load("kserve", "rest-json", k, 60, rep), _load("bare-rest", "rest-json", b, 8, rep)]
    records.append({"kind": "unsupported", "server": "mlserver", "model": "mlp",
                    "protocol": "rest-binary", "batch": 1, "reason": "HTTP 500"})
    res = report.Results(records)
    assert res.cell("turnout", "mlp", "rest-json", 1, 32)["rps"] == 5000
    ratios = res.ratios("mlp", "rest-json", 1, 32)
    assert ratios["anchor"] == "kserve"  # median 1100 beats mlserver's 900
    assert abs(ratios["x_anchor"] - 5000 / 1100) < 1e-9
    assert abs(ratios["p99_vs_anchor"] - 10 / 40) < 1e-9  # against the lower anchor p99
    assert abs(ratios["of_bare"] - 5000 / 6000) < 1e-9
    rows = {r[0]: r for r in report.targets(res)}
    tp = rows["REST JSON mlp, c=32, batch 1: throughput vs best anchor (kserve)"]
    assert tp[1] == "4.55×" and tp[3] == "**missed**"
    assert rows["REST JSON mlp, c=32, batch 1: p99 vs best anchor p99"][3] == "met"
    assert rows["REST JSON mlp, c=32: throughput vs bare-rest"][1:] == ("83%", "≥ 85%", "**missed**")


def test_write_keeps_notes_and_marks_unsupported(tmp_path: Path) -> None:
    records = [META, _load("turnout", "grpc", 2000, 20), _load("kserve", "grpc", 1000, 50),
               {"kind": "unsupported", "server": "mlserver", "model": "mlp", "protocol": "grpc",
                "batch": 1, "reason": "gRPC UNIMPLEMENTED"},
               {"kind": "floor", "model": "mlp", "batch": 64, "us_per_call": 500.0,
                "calls_per_s": 2000.0, "rows_per_s": 128000.0},
               {"kind": "start", "server": "turnout", "rep": 0, "models": ["mlp"],
                "cold_start_s": 1.2, "idle_rss_mb": 120.0, "idle_pss_mb": 100.0, "processes": 1},
               {"kind": "cold", "server": "turnout", "rep": 0, "models": ["mlp"], "workers": 4,
                "cold_start_s": 1.5, "idle_rss_mb": 400.0, "idle_pss_mb": 180.0, "processes": 5},
               {"kind": "cold", "server": "turnout", "rep": 0, "models": ["iris"], "workers": 1,
                "compile_cache": "empty", "cold_start_s": 4.0, "idle_rss_mb": 250.0,
                "idle_pss_mb": 240.0, "processes": 1},
               {"kind": "cold", "server": "turnout", "rep": 0, "models": ["iris"], "workers": 1,
                "compile_cache": "warm", "cold_start_s": 0.9, "idle_rss_mb": 105.0,
                "idle_pss_mb": 100.0, "processes": 1}]
    jsonl = _write(tmp_path, records)
    (tmp_path / "RESULTS.md").write_text(f"old\n{report.NOTES_START}\nbatching did it\n"
                                         f"{report.NOTES_END}\n")
    report.write(jsonl, tmp_path)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "batching did it" in text
    assert "| 1 | 32 | 2,000 · 6.67 / 20.0 | n/a | 1,000 · 16.7 / 50.0 | 2.00× | 0.40× | — |" in text
    assert "gRPC UNIMPLEMENTED" in text
    assert "| Memory (PSS), 4 workers vs one | 1.80× (180 vs 100 MiB) | ≤ 2× | met |" in text
    assert "| Idle RSS, one worker, all models (mlp) | 120 MiB | ≤ 150 MB | met |" in text
    assert ("| Cold start, sklearn model alone (process start → ready; compiled-model cache "
            "filled by an earlier start) | 0.90 s | ≤ 1.5 s | met |") in text
    assert "| Idle RSS, one worker, sklearn model alone | 105 MiB | ≤ 150 MB | met |" in text
    assert "| turnout (compile cache empty) | iris | 1 | 4.00 s | 250 MiB |" in text


def test_defaults_get_ratios_and_the_heavy_table_shows_both_floors(tmp_path: Path) -> None:
    """A run without the tuned Turnout: the defaults' cells get the ratio columns, and the
    torch table states the program's floor and its ONNX twin's (what Turnout serves)."""
    meta = {**META, "models": ["torch"], "concurrency": [64]}
    records = [meta, _load("turnout-defaults", "grpc", 1800, 40, model="torch", conc=64),
               _load("pytriton", "grpc", 900, 130, model="torch", conc=64),
               {"kind": "floor", "model": "torch", "batch": 128, "us_per_call": 50000.0,
                "calls_per_s": 20.0, "rows_per_s": 2500.0},
               {"kind": "floor", "model": "torch-onnx", "batch": 64, "us_per_call": 20000.0,
                "calls_per_s": 50.0, "rows_per_s": 3200.0}]
    res = report.Results(records)
    ratios = res.ratios("torch", "grpc", 1, 64)
    assert ratios["anchor"] == "pytriton" and abs(ratios["x_anchor"] - 2.0) < 1e-9
    text = "\n".join(report.heavy_model(res))
    assert ("Raw batched floor: 2,500 rows/s (torch.export program alone, batch 128; the best "
            "reading of the run).") in text
    assert "same minutes" not in text  # one reading: nothing to pair
    assert "ONNX Runtime (one thread)" in text and "3,200 rows/s (batch 64)" in text
    assert "| turnout-defaults | torch | gRPC | 1,800 | 72% | 56% | 40.0 |" in text
    assert "| pytriton | torch | gRPC | 900 | 36% | 28% | 130.0 |" in text


def _floor(model, batch, rows, rep):
    return {"kind": "floor", "model": model, "batch": batch, "rep": rep,
            "us_per_call": batch / rows * 1e6, "calls_per_s": rows / batch, "rows_per_s": rows}


def test_heavy_model_floor_read_around_every_repetition(tmp_path: Path) -> None:
    """Floors read before each repetition and after the last: "of best floor" uses the best
    reading of the run, "same minutes" each repetition's rows/s over the mean of the readings
    around it (median over repetitions); the in-process table shows the best reading."""
    meta = {**META, "models": ["torch"], "protocols": ["grpc"], "concurrency": [64], "reps": 2}
    records = [meta,
               _floor("torch", 64, 9000.0, 0), _floor("torch", 128, 10000.0, 0),
               _load("turnout-defaults", "grpc", 7000, 15, rep=0, model="torch", conc=64),
               _floor("torch", 64, 11000.0, 1), _floor("torch", 128, 12000.0, 1),
               _load("turnout-defaults", "grpc", 8000, 15, rep=1, model="torch", conc=64),
               _floor("torch", 64, 12500.0, 2), _floor("torch", 128, 14000.0, 2)]
    res = report.Results(records)
    assert res.floor[("torch", 128)]["rows_per_s"] == 14000.0
    assert res.floor_readings("torch") == {0: 10000.0, 1: 12000.0, 2: 14000.0}
    same = res.of_floor_same_minutes("turnout-defaults", "torch", "torch", "grpc", 1, 64)
    assert abs(same - statistics.median([7000 / 11000, 8000 / 13000])) < 1e-12
    text = "\n".join(report.heavy_model(res))
    assert "Raw batched floor: 14,000 rows/s" in text
    assert "read 3 times (before every repetition and after the last): 10,000 to 14,000" in text
    # median 7,500 rows/s: 54% of the best reading; 63% of the same minutes' floor (the
    # median of 7,000 / 11,000 and 8,000 / 13,000)
    assert "| turnout-defaults | torch | gRPC | 7,500 | 54% | 63% | 15.0 |" in text
    jsonl = _write(tmp_path, records)
    report.write(jsonl, tmp_path)
    assert "| torch | 128 | " in (tmp_path / "RESULTS.md").read_text()
    assert "| 14,000 |" in (tmp_path / "RESULTS.md").read_text()


def test_heavy_model_floor_read_around_every_load_run(tmp_path: Path) -> None:
    """With a floor read just before and after each load run, "same cell" holds each run
    against the mean of its two readings (median over repetitions); runs without them
    (older results) leave the column out."""
    meta = {**META, "models": ["torch"], "protocols": ["grpc"], "concurrency": [64], "reps": 2}
    loads = [{**_load("turnout-defaults", "grpc", 7000, 15, rep=0, model="torch", conc=64),
              "floor_before": 9000.0, "floor_after": 11000.0},
             {**_load("turnout-defaults", "grpc", 9000, 15, rep=1, model="torch", conc=64),
              "floor_before": 12000.0, "floor_after": 12000.0}]
    records = [meta, _floor("torch", 128, 10000.0, 0), loads[0],
               _floor("torch", 128, 12000.0, 1), loads[1], _floor("torch", 128, 14000.0, 2)]
    res = report.Results(records)
    cell = res.of_floor_same_cell("turnout-defaults", "torch", "grpc", 1, 64)
    assert abs(cell - statistics.median([7000 / 10000, 9000 / 12000])) < 1e-12
    text = "\n".join(report.heavy_model(res))
    assert "just before and just after it" in text
    # median 8,000 rows/s: 57% of the best reading (14,000); same minutes: median of
    # 7,000 / 11,000 and 9,000 / 13,000 = 66%; same cell: median of 70% and 75% = 72%
    assert "| turnout-defaults | torch | gRPC | 8,000 | 57% | 66% | 72% | 15.0 |" in text
    older = report.Results([meta, _floor("torch", 128, 10000.0, 0),
                            _load("turnout-defaults", "grpc", 7000, 15, rep=0, model="torch",
                                  conc=64), _floor("torch", 128, 12000.0, 1)])
    assert older.of_floor_same_cell("turnout-defaults", "torch", "grpc", 1, 64) is None
    assert "same cell" not in "\n".join(report.heavy_model(older))
