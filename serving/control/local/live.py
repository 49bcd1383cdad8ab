"""Live terminal views for the CLI: ``turnout status --watch``, and progress while ``turnout up``
and ``turnout apply --wait`` wait for replicas to become ready and canaries to walk their steps.

Everything is drawn from successive ``turnout status`` documents
(:func:`serving.control.local.status.status`), so a view can never show what the status does not
say. rich is imported inside the functions that draw, and this module only by the commands that
draw: the plane's control loop, the router and the model servers never load it. Without a
terminal (a pipe, a log file, CI) the views fall back to plain lines that scripts can read.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from serving.control.local.status import headline, render

Fetch = Callable[[], dict[str, Any]]
SETTLED = ("stable", "canary", "rolled-back")  # phases in which nothing moves by itself


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


# -- turnout status --watch ----------------------------------------------------------------------

def watch(fetch: Fetch, *, interval: float, out: TextIO | None = None,
          as_json: bool = False) -> int:
    """Redraw the status every ``interval`` seconds until Ctrl-C (exit status 0).

    On a terminal one live view is redrawn in place; otherwise the text rendering is printed
    again each time, under a line with the time, so a log of it reads as a history. With
    ``as_json``, one status document per line (JSON Lines), for scripts.
    """
    out = out or sys.stdout
    try:
        if as_json:
            while True:
                print(json.dumps(fetch(), separators=(",", ":")), file=out, flush=True)
                time.sleep(interval)
        if not is_terminal(out):
            while True:
                print(f"--- {time.strftime('%H:%M:%S')}\n{render(fetch())}", file=out, flush=True)
                time.sleep(interval)
        from rich.console import Console
        from rich.live import Live

        with Live(view(fetch()), console=Console(file=out), auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(fetch()), refresh=True)
    except KeyboardInterrupt:
        return 0


def view(doc: dict[str, Any]) -> Any:
    """The status document as rich renderables: one table per service, its last events."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text.assemble(
        ("turnout", "bold"), f"  router http :{doc['http_port']}  grpc :{doc['grpc_port']}  ",
        (f"updated {time.strftime('%H:%M:%S')}  (Ctrl-C to stop)", "dim"))]
    for svc in doc["services"]:
        table = Table(title=Text(headline(svc), style="bold"), title_justify="left")
        for column, justify in (("ROLE", "left"), ("REVISION", "left"), ("WEIGHT", "right"),
                                ("", "left"), ("READY", "right"), ("RPS", "right"),
                                ("ERR%", "right"), ("P99 ms", "right"), ("MODEL", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for v in svc["variants"]:
            r = v["replicas"]
            p99 = "-" if v["p99_ms"] is None else f"{v['p99_ms']:.1f}"
            err = v["error_rate"] * 100
            table.add_row(v["role"], v["revision"], f"{v['weight']}%", _bar(v["weight"]),
                          Text(f"{r['ready']}/{r['total']}",
                               style="green" if r["ready"] else "yellow"),
                          f"{v['rps']:.1f}", Text(f"{err:.2f}", style="red" if err else ""),
                          p99, v.get("registryVersion") or v["storageUri"])
        parts.append(table)
        for event in svc["events"][-3:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
            parts.append(Text(f"  {stamp}  {event['message']}", style="dim"))
    if doc["graphs"]:
        parts.append(Text(f"graphs: {', '.join(doc['graphs'])}"))
    return Group(*parts)


def _bar(percent: int, width: int = 20) -> str:
    filled = round(percent * width / 100)
    return "█" * filled + "·" * (width - filled)


# -- progress while a command waits -----------------------------------------------------------

class Progress:
    """Replicas becoming ready and rollout steps, from successive status documents.

    On a terminal: one bar per service (ready replicas of every serving revision, then the
    canary's share while it walks its steps) with each new event printed above the bars.
    Otherwise: each new event and each change of readiness as a plain line.
    """

    def __init__(self, services: list[str], *, stream: TextIO, since: float = 0.0,
                 seen: tuple[str, ...] = ()) -> None:
        self.services = services
        self.stream = stream
        self.since = since  # events before this (wall clock) were shown already
        self.seen: set[tuple[float, str]] = set()
        self.printed = set(seen)  # event messages the command printed itself
        self.said: dict[str, str] = {}
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        if is_terminal(stream):
            from rich.console import Console
            from rich.progress import BarColumn, SpinnerColumn, TextColumn
            from rich.progress import Progress as Bars

            self._bars = Bars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                              TextColumn("{task.fields[state]}"),
                              console=Console(file=stream), transient=False)
            self._bars.start()
            for name in services:
                self._tasks[name] = self._bars.add_task(name, total=1, state="starting")

    def update(self, doc: dict[str, Any]) -> None:
        for svc in doc["services"]:
            if svc["name"] not in self.services:
                continue
            for event in svc["events"]:
                key = (event["at"], event["message"])
                if event["at"] >= self.since and key not in self.seen:
                    self.seen.add(key)
                    if event["message"] not in self.printed:
                        self._line(f"{svc['name']}: {event['message']}")
            ready, total, state = readiness(svc)
            if self._bars is not None:
                rolling = svc["canary"] and svc["phase"] == "progressing" and ready == total
                self._bars.update(self._tasks[svc["name"]],
                                  completed=svc["canary_percent"] if rolling else ready,
                                  total=100 if rolling else max(total, 1), state=state)
            elif self.said.get(svc["name"]) != state:
                self.said[svc["name"]] = state
                self._line(f"{svc['name']}: {state}")

    def _line(self, text: str) -> None:
        if self._bars is not None:
            self._bars.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()


def readiness(svc: dict[str, Any]) -> tuple[int, int, str]:
    """(ready, wanted, words) over the serving revisions of one service."""
    ready = sum(min(v["replicas"]["ready"], _wanted(v)) for v in svc["variants"])
    total = sum(_wanted(v) for v in svc["variants"])
    words = ", ".join(f"{v['revision']} {v['replicas']['ready']}/{_wanted(v)} ready"
                      for v in svc["variants"])
    if svc["canary"] and svc["phase"] == "progressing":
        words += f"; canary at {svc['canary_percent']}%"
    return ready, total, words


def _wanted(variant: dict[str, Any]) -> int:
    desired = variant["replicas"]["desired"]
    return max(desired if desired is not None else variant["replicas"]["total"], 0)


def settled(svc: dict[str, Any], *, rollout: bool) -> bool:
    """Every serving revision has the replicas it wants; with ``rollout``, no step is pending."""
    ready, total, _ = readiness(svc)
    return ready >= total and (not rollout or svc["phase"] in SETTLED)


def follow(fetch: Fetch, services: list[str], *, timeout: float, stream: TextIO,
           since: float, seen: tuple[str, ...] = (), interval: float = 0.5) -> int:
    """Wait until ``services`` are ready and their rollouts have ended; 0 when they did, 1 on a
    rollback or when ``timeout`` seconds pass first."""
    progress = Progress(services, stream=stream, since=since, seen=seen)
    deadline = time.monotonic() + timeout
    try:
        while True:
            doc = fetch()
            progress.update(doc)
            mine = [s for s in doc["services"] if s["name"] in services]
            if len(mine) == len(services) and all(settled(s, rollout=True) for s in mine):
                back = [s["name"] for s in mine if s["phase"] == "rolled-back"]
                if back:
                    progress.close()
                    print(f"rolled back: {', '.join(back)}", file=stream)
                    return 1
                return 0
            if time.monotonic() > deadline:
                progress.close()
                print(f"still waiting after {timeout:.0f}s: " + "; ".join(
                    f"{s['name']} {s['phase']} ({readiness(s)[2]})" for s in mine), file=stream)
                return 1
            time.sleep(interval)
    except KeyboardInterrupt:  # stop waiting; the plane carries on
        return 130
    finally:
        progress.close()
