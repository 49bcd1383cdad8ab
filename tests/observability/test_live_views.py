"""The terminal views' decisions on status documents: when ``apply --wait`` stops and with what
exit status, what each line says (the end-to-end runs are in test_status_watch.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from serving.control.local.live import follow, readiness, view
from serving.control.local.status import headline


def doc(phase: str, percent: int, ready: tuple[int, int], *, events: list[str] | tuple[()] = (),
        steps: list[int] | tuple[int, ...] | None = (10, 50, 100)) -> dict[str, Any]:
    variants = [{"role": "stable", "revision": "iris-00001", "weight": 100 - percent,
                 "storageUri": "file://m/1", "replicas": {"ready": ready[0], "total": 1,
                                                          "desired": 1, "restarts": 0},
                 "rps": 1.5, "error_rate": 0.0, "p99_ms": 2.0}]
    if phase != "stable":
        variants.append({"role": "canary", "revision": "iris-00002", "weight": percent,
                         "storageUri": "file://m/2",
                         "replicas": {"ready": ready[1], "total": 1, "desired": None,
                                      "restarts": 0},
                         "rps": 0.5, "error_rate": 0.25, "p99_ms": None})
    return {"http_port": 1, "grpc_port": 2, "graphs": [], "services": [{
        "name": "iris", "phase": phase, "stable": "iris-00001",
        "canary": None if phase == "stable" else "iris-00002", "canary_percent": percent,
        "previous": None, "steps": list(steps) if steps else None, "variants": variants,
        "events": [{"at": 100.0 + i, "kind": "step", "message": m}
                   for i, m in enumerate(events)]}]}


def feed(*docs: dict[str, Any]) -> Any:
    it: Iterator[dict[str, Any]] = iter(docs)
    return lambda: next(it)


def test_follow_prints_each_new_event_once_and_ends_at_the_promotion() -> None:
    out = io.StringIO()
    code = follow(feed(doc("progressing", 10, (1, 0), events=["started"]),
                       doc("progressing", 10, (1, 1), events=["started"]),
                       doc("progressing", 50, (1, 1), events=["started", "to 50%"]),
                       doc("stable", 0, (1, 0), events=["started", "to 50%", "promoted"])),
                  ["iris"], timeout=30, stream=out, since=0, seen=("started",), interval=0)
    assert code == 0
    assert out.getvalue().splitlines() == [
        "iris: iris-00001 1/1 ready, iris-00002 0/1 ready; canary at 10%",
        "iris: iris-00001 1/1 ready, iris-00002 1/1 ready; canary at 10%",
        "iris: to 50%",
        "iris: iris-00001 1/1 ready, iris-00002 1/1 ready; canary at 50%",
        "iris: promoted",
        "iris: iris-00001 1/1 ready"]


def test_follow_fails_on_a_rollback_and_on_a_timeout() -> None:
    out = io.StringIO()
    assert follow(feed(doc("rolled-back", 0, (1, 1), events=["rolled back: error rate"])),
                  ["iris"], timeout=30, stream=out, since=0, interval=0) == 1
    assert out.getvalue().splitlines()[-1] == "rolled back: iris"
    out = io.StringIO()
    assert follow(lambda: doc("progressing", 10, (1, 0)), ["iris"], timeout=0, stream=out,
                  since=0, interval=0) == 1
    assert out.getvalue().splitlines()[-1] == (
        "still waiting after 0s: iris progressing (iris-00001 1/1 ready, iris-00002 0/1 ready; "
        "canary at 10%)")


def test_follow_ignores_events_from_before_the_apply_and_stops_on_ctrl_c() -> None:
    def interrupted() -> dict[str, Any]:
        raise KeyboardInterrupt

    out = io.StringIO()
    assert follow(feed(doc("stable", 0, (1, 0), events=["old"])), ["iris"], timeout=30,
                  stream=out, since=200.0, interval=0) == 0
    assert "old" not in out.getvalue()
    assert follow(interrupted, ["iris"], timeout=30, stream=io.StringIO(), since=0) == 130


@pytest.mark.parametrize(("percent", "steps", "expected"), [
    (50, [10, 50, 100], "iris  [progressing]  stable iris-00001, canary iris-00002 at 50% "
                        "(step 2 of 3)"),
    (30, [10, 50, 100], "iris  [progressing]  stable iris-00001, canary iris-00002 at 30%"),
    (30, None, "iris  [progressing]  stable iris-00001, canary iris-00002 at 30%"),
])
def test_headline_names_the_step(percent: int, steps: list[int] | None, expected: str) -> None:
    assert headline(doc("progressing", percent, (1, 1), steps=steps)["services"][0]) == expected


def test_the_live_view_draws_every_revision_with_its_numbers() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(view(doc("progressing", 50, (1, 0), events=["to 50%"])))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "canary iris-00002 at 50% (step 2 of 3)" in text
    rows = {cells[1]: cells for line in text.splitlines()
            if len(cells := [c.strip() for c in line.split("│") if c.strip()]) > 5}
    assert rows["iris-00001"][:3] + rows["iris-00001"][4:] == [
        "stable", "iris-00001", "50%", "1/1", "1.5", "0.00", "2.0", "file://m/1"]
    assert rows["iris-00002"][:3] + rows["iris-00002"][4:] == [
        "canary", "iris-00002", "50%", "0/1", "0.5", "25.00", "-", "file://m/2"]
    assert rows["iris-00002"][3] == "█" * 10 + "·" * 10
    assert "to 50%" in text
    assert readiness(doc("stable", 0, (0, 0))["services"][0])[:2] == (0, 1)


def test_watch_as_json_writes_one_document_per_line_until_ctrl_c() -> None:
    import json

    from serving.control.local.live import watch

    docs = [doc("canary", 30, (1, 1)), doc("canary", 40, (1, 1))]

    def fetch() -> dict[str, Any]:
        if not docs:
            raise KeyboardInterrupt
        return docs.pop(0)

    out = io.StringIO()
    assert watch(fetch, interval=0.01, out=out, as_json=True) == 0
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["services"][0]["canary_percent"] for line in lines] == [30, 40]
