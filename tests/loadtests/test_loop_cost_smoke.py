"""The loop-cost probe (loadtests/loop_cost.py) runs end to end: every in-process client call
is answered with a message by the real engine, data plane and batcher, and requests merge."""

from __future__ import annotations

from pathlib import Path

from loadtests import loop_cost


def test_loop_cost_runs_end_to_end(tmp_path: Path) -> None:
    summary = loop_cost.main(["--clients", "16", "--requests", "400", "--reps", "2",
                              "--work", str(tmp_path)])
    assert summary["loop_us_per_request"] > 0
    assert summary["mean_batch"] > 1.5  # 16 closed-loop clients share batches


def test_loop_cost_runs_end_to_end_over_rest(tmp_path: Path) -> None:
    """The REST variant: in-process HTTP/1.1 keep-alive clients through the model server's
    fast path; every answer is a 200 (the probe raises otherwise) and requests merge."""
    summary = loop_cost.main(["--protocol", "rest", "--clients", "16", "--requests", "400",
                              "--reps", "2", "--work", str(tmp_path)])
    assert summary["loop_us_per_request"] > 0
    assert summary["mean_batch"] > 1.5
