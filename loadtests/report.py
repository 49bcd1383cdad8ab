"""RESULTS.md and the plots, from one run's JSON lines (medians over repetitions).

    python -m loadtests.report loadtests/results/run-YYYYmmdd-HHMMSS.jsonl [--out loadtests]

The text between ``<!-- notes:start -->`` and ``<!-- notes:end -->`` in an existing RESULTS.md
(the "what made the difference" section) is kept when the file is written again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

TURNOUTS = ("turnout", "turnout-defaults", "turnout-batched")
SERVER_ORDER = ("turnout", "turnout-defaults", "turnout-batched", "mlserver", "kserve",
                "rayserve", "litserve", "bentoml", "pytriton", "bare-rest", "bare-grpc")
ANCHORS = ("mlserver", "kserve", "rayserve", "litserve", "bentoml", "pytriton")
ANCHOR_TITLES = {"mlserver": "MLServer", "kserve": "KServe", "rayserve": "Ray Serve",
                 "litserve": "LitServe", "bentoml": "BentoML", "pytriton": "PyTriton"}
PROTOCOL_TITLES = {"rest-json": "REST JSON", "rest-binary": "REST binary", "grpc": "gRPC"}
BARE_FOR = {"rest-json": "bare-rest", "rest-binary": "bare-rest", "grpc": "bare-grpc"}
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"
DEFAULT_NOTES = """_To be filled in by whoever changes the hot path: which change moved which figure, with the
before/after runs' JSONL file names._"""


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Results:
    def __init__(self, records: list[dict]) -> None:
        self.records = records
        self.meta = next((r for r in records if r["kind"] == "meta"), {})
        self.end = next((r for r in records if r["kind"] == "end"), None)
        cells = defaultdict(list)
        self.failed = defaultdict(list)
        for r in records:
            if r["kind"] != "load":
                continue
            key = (r["server"], r["model"], r["protocol"], r["batch"], r["concurrency"])
            if r.get("ok"):
                cells[key].append(r)
            else:
                self.failed[key].append(r.get("error", "failed"))
        self.cells = {key: {
            "rps": _median([r["rps"] for r in rs]),
            "rows_per_s": _median([r["rows_per_s"] for r in rs]),
            "p50_ms": _median([r["p50_ms"] for r in rs]),
            "p99_ms": _median([r["p99_ms"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "n": len(rs),
        } for key, rs in cells.items()}
        self.unsupported = {(r["server"], r["model"], r["protocol"], r["batch"]): r["reason"]
                            for r in records if r["kind"] == "unsupported"}
        # Floors are measured before every repetition and after the last: ``floor`` is each
        # (model, batch)'s best reading of the run (the strictest reference), ``floors`` all.
        self.floors = [r for r in records if r["kind"] == "floor"]
        self.floor: dict[tuple[str, int], dict] = {}
        for r in self.floors:
            best = self.floor.get((r["model"], r["batch"]))
            if best is None or r["rows_per_s"] > best["rows_per_s"]:
                self.floor[(r["model"], r["batch"])] = r
        self.loads = [r for r in records if r["kind"] == "load" and r.get("ok")]
        starts, peaks, colds = defaultdict(list), defaultdict(list), defaultdict(list)
        for r in records:
            if r["kind"] == "start":
                starts[r["server"]].append(r)
            elif r["kind"] == "peak":
                peaks[r["server"]].append(r["peak_rss_mb"])
            elif r["kind"] == "cold":
                colds[(r["server"], r.get("workers", 1), tuple(r["models"]),
                       r.get("compile_cache") or "")].append(r)
        self.starts = {s: {"cold_start_s": _median([r["cold_start_s"] for r in rs]),
                           "idle_rss_mb": _median([r["idle_rss_mb"] for r in rs]),
                           "idle_pss_mb": _median([r.get("idle_pss_mb") for r in rs]),
                           "processes": max(r.get("processes", 1) for r in rs),
                           "models": rs[0]["models"], "n": len(rs)}
                       for s, rs in starts.items()}
        self.peaks = {s: max(v) for s, v in peaks.items()}
        self.colds = {k: {"cold_start_s": _median([r["cold_start_s"] for r in rs]),
                          "idle_rss_mb": _median([r["idle_rss_mb"] for r in rs]),
                          "idle_pss_mb": _median([r.get("idle_pss_mb") for r in rs]),
                          "processes": max(r.get("processes", 1) for r in rs), "n": len(rs)}
                      for k, rs in colds.items()}
        self.server_errors = [r for r in records if r["kind"] == "server_error"]

    @property
    def servers(self) -> list[str]:
        present = {k[0] for k in self.cells} | {k[0] for k in self.unsupported}
        return [s for s in SERVER_ORDER if s in present]

    @property
    def models(self) -> list[str]:
        return [m for m in self.meta.get("models", []) if any(k[1] == m for k in self.cells)]

    def floor_readings(self, model: str) -> dict[int, float]:
        """Repetition -> the model's best rows/s over batch sizes in the floor measured just
        before it (the key one past the last repetition: the floor after the run)."""
        out: dict[int, float] = {}
        for r in self.floors:
            if r["model"] == model:
                rep = r.get("rep", 0)
                out[rep] = max(out.get(rep, 0.0), r["rows_per_s"])
        return out

    def of_floor_same_minutes(self, server, model, floor_model, protocol, batch,
                              concurrency) -> float | None:
        """Median over repetitions of rows/s ÷ the floor measured around that repetition (the
        mean of the readings just before and just after it, where both exist): machine speed
        moves between minutes, so each run is held against the floor of its own minutes."""
        readings = self.floor_readings(floor_model)
        shares = []
        for r in self.loads:
            if (r["server"], r["model"], r["protocol"], r["batch"], r["concurrency"]) != (
                    server, model, protocol, batch, concurrency):
                continue
            around = [readings[k] for k in (r["rep"], r["rep"] + 1) if k in readings]
            if around:
                shares.append(r["rows_per_s"] / statistics.fmean(around))
        return statistics.median(shares) if shares else None

    def of_floor_same_cell(self, server, model, protocol, batch, concurrency) -> float | None:
        """Median over repetitions of rows/s ÷ the mean of the floor read just before and just
        after that very load run; None for runs recorded without those readings."""
        shares = [r["rows_per_s"] / statistics.fmean((r["floor_before"], r["floor_after"]))
                  for r in self.loads
                  if (r["server"], r["model"], r["protocol"], r["batch"], r["concurrency"]) == (
                      server, model, protocol, batch, concurrency)
                  and r.get("floor_before") and r.get("floor_after")]
        return statistics.median(shares) if shares else None

    def cell(self, server, model, protocol, batch, concurrency):
        return self.cells.get((server, model, protocol, batch, concurrency))

    def best_anchor(self, model, protocol, batch, concurrency):
        """(throughput of the fastest anchor, its name, the lowest p99 among anchors)."""
        found = [(c["rps"], a, c["p99_ms"]) for a in ANCHORS
                 if (c := self.cell(a, model, protocol, batch, concurrency)) and c["rps"]]
        if not found:
            return None
        rps, name, _ = max(found)
        return rps, name, min(p for _, _, p in found if p is not None)

    def ratios(self, model, protocol, batch, concurrency) -> dict:
        """Turnout's ratios in one cell: the tuned run's where there is one, else the run with
        no settings (``turnout-defaults``), else the batched one."""
        out = {}
        t = next((c for s in TURNOUTS if (c := self.cell(s, model, protocol, batch,
                                                          concurrency))), None)
        if not t:
            return out
        best = self.best_anchor(model, protocol, batch, concurrency)
        if best:
            out["x_anchor"] = t["rps"] / best[0] if best[0] else None
            out["anchor"] = best[1]
            out["p99_vs_anchor"] = t["p99_ms"] / best[2] if best[2] else None
        bare = self.cell(BARE_FOR[protocol], model, protocol, batch, concurrency)
        if bare and bare["rps"]:
            out["of_bare"] = t["rps"] / bare["rps"]
        return out


# --- formatting --------------------------------------------------------------------------------------

def _n(value, digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _mib(value):
    return "—" if value is None else f"{value:,.0f} MiB"


def _ms(value):
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _x(value):
    return "—" if value is None else f"{value:.2f}×"


def _pct(value):
    return "—" if value is None else f"{value * 100:.0f}%"


def _status(ok):
    return "—" if ok is None else ("met" if ok else "**missed**")


def targets(res: Results) -> list[tuple[str, str, str, str]]:
    rows = []
    conc = 32 if 32 in res.meta.get("concurrency", []) else max(res.meta.get("concurrency", [1]))
    for protocol, goal_tp, goal_p99 in (("rest-json", 5, 1 / 3), ("rest-binary", 5, 1 / 3),
                                        ("grpc", 2, 1 / 2)):
        for model in res.models:
            r = res.ratios(model, protocol, 1, conc)
            if "x_anchor" not in r:
                continue
            title = f"{PROTOCOL_TITLES[protocol]} {model}, c={conc}, batch 1"
            rows.append((f"{title}: throughput vs best anchor ({r['anchor']})",
                         _x(r["x_anchor"]), f"≥ {goal_tp}×",
                         _status(r["x_anchor"] is not None and r["x_anchor"] >= goal_tp)))
            rows.append((f"{title}: p99 vs best anchor p99", _x(r["p99_vs_anchor"]),
                         f"≤ {goal_p99:.2f}×", _status(r["p99_vs_anchor"] is not None
                                                       and r["p99_vs_anchor"] <= goal_p99)))
    for protocol in ("rest-json", "rest-binary", "grpc"):
        r = res.ratios("mlp", protocol, 1, conc)
        if "of_bare" in r:
            rows.append((f"{PROTOCOL_TITLES[protocol]} mlp, c={conc}: throughput vs "
                         f"{BARE_FOR[protocol]}", _pct(r["of_bare"]), "≥ 85%",
                         _status(r["of_bare"] >= 0.85)))
    floor = res.floor.get(("mlp", 64))
    if floor and 64 in res.meta.get("concurrency", []):
        # Requests of one row (what adaptive batching must merge) and of 32 rows.
        for batch in sorted(set(res.meta.get("batches", [1]))):
            for protocol in ("rest-json", "rest-binary", "grpc"):
                # With adaptive batching on when that server was measured, else plain Turnout.
                batched = res.cell("turnout-batched", "mlp", protocol, batch, 64)
                t = batched or res.cell("turnout", "mlp", protocol, batch, 64)
                if t:
                    share = t["rows_per_s"] / floor["rows_per_s"]
                    rows.append((f"{PROTOCOL_TITLES[protocol]} mlp, c=64, batch {batch}"
                                 f"{', adaptive batching' if batched else ''}: rows/s "
                                 f"vs raw batched floor ({_n(floor['rows_per_s'])} rows/s at 64 "
                                 "rows a call)", f"{_pct(share)} ({_n(t['rows_per_s'])} rows/s)",
                                 "≥ 25%", _status(share >= 0.25)))
    cold = res.colds.get(("turnout", 1, ("iris",), "warm")) \
        or res.colds.get(("turnout", 1, ("iris",), ""))
    if cold:
        rows.append(("Cold start, sklearn model alone (process start → ready; compiled-model "
                     "cache filled by an earlier start)", f"{cold['cold_start_s']:.2f} s",
                     "≤ 1.5 s", _status(cold["cold_start_s"] <= 1.5)))
        rows.append(("Idle RSS, one worker, sklearn model alone", f"{cold['idle_rss_mb']:.0f} MiB",
                     "≤ 150 MB", _status(cold["idle_rss_mb"] * 2**20 <= 150e6)))
    one = res.starts.get("turnout")
    if one:
        rows.append((f"Idle RSS, one worker, all models ({', '.join(one['models'])})",
                     f"{one['idle_rss_mb']:.0f} MiB", "≤ 150 MB",
                     _status(one["idle_rss_mb"] * 2**20 <= 150e6)))
        for (server, workers, models, _cache), c in res.colds.items():
            if server == "turnout" and workers > 1 and list(models) == one["models"]:
                # PSS: pages shared after fork count once, which is what the target is about
                # (a plain sum of RSS counts a model loaded before fork once per worker).
                if c["idle_pss_mb"] and one["idle_pss_mb"]:
                    ratio = c["idle_pss_mb"] / one["idle_pss_mb"]
                    rows.append((f"Memory (PSS), {workers} workers vs one", f"{ratio:.2f}× "
                                 f"({c['idle_pss_mb']:.0f} vs {one['idle_pss_mb']:.0f} MiB)",
                                 "≤ 2×", _status(ratio <= 2)))
                ratio = c["idle_rss_mb"] / one["idle_rss_mb"]
                rows.append((f"Sum of RSS, {workers} workers vs one (shared pages counted per "
                             "worker)", f"{ratio:.2f}× ({c['idle_rss_mb']:.0f} MiB)", "—", "—"))
    return rows


def ratio_table(res: Results) -> list[str]:
    """Turnout against every anchor and the best of them, one row per model and protocol at
    batch 1 and the highest concurrency up to 32 (the issue's cells)."""
    concs = [c for c in res.meta.get("concurrency", []) if c <= 32] or res.meta.get(
        "concurrency", [1])
    conc = max(concs)
    present = [a for a in ANCHORS if any(k[0] == a for k in res.cells)]
    if "turnout" not in {k[0] for k in res.cells} or not present:
        return []
    defaults = any(k[0] == "turnout-defaults" for k in res.cells)
    head = ["model", "protocol", "Turnout", *(["Turnout (defaults)"] if defaults else []),
            *(ANCHOR_TITLES[a] for a in present), "Turnout ÷ best anchor",
            *(["defaults ÷ best anchor"] if defaults else [])]
    lines = [f"## Turnout vs the best anchor (requests/s, batch 1, c={conc})", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model in res.models:
        for protocol in res.meta.get("protocols", []):
            t = res.cell("turnout", model, protocol, 1, conc)
            if not t:
                continue
            cells = []
            for a in present:
                c = res.cell(a, model, protocol, 1, conc)
                cells.append(_n(c["rps"]) if c else "—")
            r = res.ratios(model, protocol, 1, conc)
            best = f"{_x(r.get('x_anchor'))} ({ANCHOR_TITLES[r['anchor']]})" \
                if r.get("anchor") else "—"
            first, last = [_n(t["rps"])], [best]
            if defaults:
                d = res.cell("turnout-defaults", model, protocol, 1, conc)
                top = res.best_anchor(model, protocol, 1, conc)
                first.append(_n(d["rps"]) if d else "—")
                last.append(_x(d["rps"] / top[0]) if d and top and top[0] else "—")
            lines.append(f"| {model} | {PROTOCOL_TITLES[protocol]} | " + " | ".join(first)
                         + " | " + " | ".join(cells) + " | " + " | ".join(last) + " |")
    return [*lines, ""]


def heavy_model(res: Results) -> list[str]:
    """The heavier model where batching decides: rows/s at c=64 against the raw batched floor
    (the model alone at its best batch size) and PyTriton's dynamic batching; also against the
    floor of the same weights in ONNX Runtime, which is what Turnout serves by default (its
    verified compilation, where faster)."""
    def best_floor(model: str) -> dict | None:
        found = [f for (m, _), f in res.floor.items() if m == model]
        return max(found, key=lambda f: f["rows_per_s"]) if found else None

    best, twin = best_floor("torch"), best_floor("torch-onnx")
    if not best or 64 not in res.meta.get("concurrency", []):
        return []
    readings = res.floor_readings("torch")
    paired = len(readings) > 1
    per_cell = any(r.get("floor_before") for r in res.loads)
    lines = ["## Heavier model (torch), one-row requests at c=64", "",
             f"Raw batched floor: {_n(best['rows_per_s'])} rows/s (torch.export program alone, "
             f"batch {best['batch']}; the best reading of the run)."]
    if paired:
        lines.append(f"The floor was read {len(readings)} times (before every repetition and "
                     f"after the last): {_n(min(readings.values()))} to "
                     f"{_n(max(readings.values()))} rows/s. \"same minutes\" holds each "
                     "repetition against the mean of the readings just before and after it "
                     "(median over repetitions); \"of best floor\" against the best reading.")
    if per_cell:
        lines.append("\"same cell\" holds each load run against the mean of two floor "
                     "readings (the torch program, batch 128, on the server's core, one second "
                     "each) taken just before and just after it (median over repetitions): the "
                     "closest comparison this machine allows.")
    if twin:
        lines.append(f"The same weights in ONNX Runtime (one thread), which Turnout serves by "
                     f"default once its verified compilation is timed faster: "
                     f"{_n(twin['rows_per_s'])} rows/s (batch {twin['batch']}).")
    lines += ["", "| server | model | protocol | rows/s | of best floor |"
              + (" of floor, same minutes |" if paired else "")
              + (" of floor, same cell |" if per_cell else "")
              + (" of ONNX floor |" if twin else "") + " p99 ms |",
              "| --- | --- | --- | --- | --- |" + (" --- |" if paired else "")
              + (" --- |" if per_cell else "") + (" --- |" if twin else "") + " --- |"]
    for server in (*TURNOUTS, "pytriton"):
        for model in ("torch", "torch-onnx"):
            for protocol in res.meta.get("protocols", []):
                c = res.cell(server, model, protocol, 1, 64)
                if c:
                    same = res.of_floor_same_minutes(server, model, "torch", protocol, 1, 64)
                    cell = res.of_floor_same_cell(server, model, protocol, 1, 64)
                    lines.append(f"| {server} | {model} | {PROTOCOL_TITLES[protocol]} | "
                                 f"{_n(c['rows_per_s'])} | "
                                 f"{_pct(c['rows_per_s'] / best['rows_per_s'])} | "
                                 + (f"{_pct(same) if same else '—'} | " if paired else "")
                                 + (f"{_pct(cell) if cell else '—'} | " if per_cell else "")
                                 + (f"{_pct(c['rows_per_s'] / twin['rows_per_s'])} | "
                                    if twin else "")
                                 + f"{_ms(c['p99_ms'])} |")
    return [*lines, ""]


def render(res: Results, jsonl: Path, out_dir: Path, plots: list[Path], notes: str) -> str:
    meta = res.meta
    machine = meta.get("machine", {})
    versions = meta.get("versions", {})
    lines = ["# Benchmark results", ""]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("t", time.time())))
    try:
        source = jsonl.resolve().relative_to(out_dir.resolve())
    except ValueError:
        source = jsonl
    lines += [
        f"Generated by `python -m loadtests.run{' --quick' if meta.get('quick') else ''}` on "
        f"{when} from `{source}` (`python -m loadtests.report {source}` rewrites this file).",
        "",
        f"- Machine: {machine.get('cpus')} × {machine.get('cpu_model', '?')}; load average "
        f"{_n(machine.get('loadavg', [None])[0], 2)} at the start"
        + (f", {_n(res.end['loadavg'][0], 2)} at the end" if res.end else "")
        + (f"; the run took {res.end['elapsed_s'] / 60:.1f} min" if res.end else "") + ".",
        "- Pinning: " + (f"servers on core {meta.get('server_cpu')}, h2load (one thread) on core "
                          f"{meta.get('load_cpu')}" if meta.get("pinned") else "none") + ".",
        f"- Each figure is the median of {meta.get('reps')} repetition(s) of "
        f"{meta.get('duration_s')} s measured after {meta.get('warmup_s')} s of warm-up; servers "
        "interleaved (the order rotates every repetition). Concurrency = h2load connections, one "
        "request in flight each (HTTP/1.1 for REST, h2c for gRPC).",
        f"- Versions: Turnout {versions.get('turnout_commit', '?')}"
        f"{' (+ uncommitted changes)' if versions.get('turnout_dirty') else ''}, "
        + "".join(f"{title} {versions[a]}, " for a, title in ANCHOR_TITLES.items()
                  if versions.get(a))
        + f"{versions.get('h2load', 'h2load ?')}, Python {versions.get('python')}."
        + (f" Turnout flags: `{meta['turnout_args']}`." if meta.get("turnout_args") else ""),
        "- Ratios compare Turnout with the best anchor in the same cell: throughput against the "
        "faster anchor's, p99 against the lower anchor p99. \"of bare\" is Turnout's throughput "
        "as a share of the bare reference server on the same protocol (mlp only).",
        "",
    ]
    if res.server_errors:
        lines += ["**Failures:**", ""]
        seen = set()
        for e in res.server_errors:
            key = (e["server"], e.get("model"), e["error"][:200])
            if key in seen:
                continue
            seen.add(key)
            reps = sorted({str(x["rep"] + 1) if isinstance(x.get("rep"), int) else "?"
                           for x in res.server_errors
                           if (x["server"], x.get("model"), x["error"][:200]) == key})
            lines.append(f"- {e['server']}{' ' + e['model'] if e.get('model') else ''} "
                         f"(repetition {', '.join(reps)}): {e['error'][:300]}")
        lines.append("")
    rows = targets(res)
    if rows:
        lines += ["## Targets (issue 4)", "", "| target | measured | goal | status |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        lines += [""]

    lines += ratio_table(res)
    lines += heavy_model(res)
    lines += ["## Throughput and latency", "",
              "Each server cell: requests/s · p50 / p99 in ms (errors, if any). "
              "\"n/a\" = the protocol is not supported by that server (its probe failed).", ""]
    servers = res.servers
    for model in res.models:
        lines += [f"### {model}", ""]
        for protocol in meta.get("protocols", []):
            cols = [s for s in servers
                    if any(k[0] == s and k[1] == model and k[2] == protocol for k in res.cells)
                    or any(k[0] == s and k[1] == model and k[2] == protocol
                           for k in res.unsupported)]
            if not cols:
                continue
            head = ["batch", "conc", *cols, "× best anchor", "p99 ÷ anchor", "of bare"]
            lines += [f"#### {PROTOCOL_TITLES[protocol]}", "", "| " + " | ".join(head) + " |",
                      "|" + " --- |" * len(head)]
            for batch in meta.get("batches", []):
                for conc in meta.get("concurrency", []):
                    cells = []
                    for s in cols:
                        c = res.cell(s, model, protocol, batch, conc)
                        if c:
                            err = f" ({c['errors']} errors)" if c["errors"] else ""
                            cells.append(f"{_n(c['rps'])} · {_ms(c['p50_ms'])} / "
                                         f"{_ms(c['p99_ms'])}{err}")
                        elif (s, model, protocol, batch) in res.unsupported:
                            cells.append("n/a")
                        elif (s, model, protocol, batch, conc) in res.failed:
                            cells.append("failed")
                        else:
                            cells.append("—")
                    r = res.ratios(model, protocol, batch, conc)
                    lines.append(f"| {batch} | {conc} | " + " | ".join(cells) + f" | "
                                 f"{_x(r.get('x_anchor'))} | {_x(r.get('p99_vs_anchor'))} | "
                                 f"{_pct(r.get('of_bare'))} |")
            lines.append("")
        unsupported = sorted({(s, p, reason) for (s, m, p, _), reason in res.unsupported.items()
                              if m == model})
        for s, p, reason in unsupported:
            lines.append(f"- {s} {PROTOCOL_TITLES[p]}: not measured — {reason[:160]}")
        if unsupported:
            lines.append("")

    if res.floor:
        lines += ["## In-process floor", "",
                  "The framework's own call on the same core (sklearn `predict`, XGBoost "
                  "`inplace_predict`, ONNX Runtime `run` with one thread), no serving at all; "
                  "the best of the readings before every repetition and after the last.", "",
                  "| model | batch | µs per call | calls/s | rows/s |", "| --- | --- | --- | --- | --- |"]
        for (model, batch), f in sorted(res.floor.items()):
            lines.append(f"| {model} | {batch} | {f['us_per_call']:.1f} | {_n(f['calls_per_s'])} "
                         f"| {_n(f['rows_per_s'])} |")
        lines.append("")

    if res.starts or res.colds:
        lines += ["## Cold start and memory", "",
                  "Cold start: process start until every model is ready on every protocol the "
                  "server has. RSS: summed over the server's whole process tree, idle 1 s after "
                  "ready, and the peak sampled every 0.2 s under load. PSS: the same tree's "
                  "proportional set size, where pages shared between its processes count once.",
                  "",
                  "| server | models | processes | cold start | idle RSS | idle PSS | peak RSS |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for s in SERVER_ORDER:
            if s in res.starts:
                st = res.starts[s]
                lines.append(f"| {s} | {', '.join(st['models'])} | {st['processes']} | "
                             f"{st['cold_start_s']:.2f} s | {st['idle_rss_mb']:.0f} MiB | "
                             f"{_mib(st['idle_pss_mb'])} | {_mib(res.peaks.get(s))} |")
            for (server, workers, models, cache), c in sorted(res.colds.items()):
                if server == s:
                    label = f"{s} --workers {workers}" if workers > 1 else s
                    if cache:
                        label += f" (compile cache {cache})"
                    lines.append(f"| {label} | {', '.join(models)} | {c['processes']} | "
                                 f"{c['cold_start_s']:.2f} s | {c['idle_rss_mb']:.0f} MiB | "
                                 f"{_mib(c['idle_pss_mb'])} | — |")
        lines.append("")

    if plots:
        lines += ["## Plots", "", "Throughput and p99 against concurrency, per server; one figure "
                  "per model (rows: protocol; columns: batch 1 and 32).", ""]
        for p in plots:
            try:
                rel = p.resolve().relative_to(out_dir.resolve())
            except ValueError:
                rel = p
            lines += [f"![{p.stem}]({rel})", ""]

    lines += ["## What made the difference", "", NOTES_START, notes.strip(), NOTES_END, ""]
    return "\n".join(lines)


def plot(res: Results, out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
        return []
    meta = res.meta
    protocols = [p for p in meta.get("protocols", [])
                 if any(k[2] == p for k in res.cells)]
    batches = meta.get("batches", [1])
    written = []
    colours = {"turnout": "tab:blue", "turnout-batched": "tab:purple", "mlserver": "tab:orange",
               "kserve": "tab:green", "bare-rest": "tab:gray", "bare-grpc": "tab:gray"}
    for model in res.models:
        fig, axes = plt.subplots(len(protocols), 2 * len(batches), squeeze=False,
                                 figsize=(4.2 * 2 * len(batches), 3.2 * len(protocols)))
        for i, protocol in enumerate(protocols):
            for j, batch in enumerate(batches):
                ax_tp, ax_p99 = axes[i][2 * j], axes[i][2 * j + 1]
                for s in res.servers:
                    pts = [(c, res.cell(s, model, protocol, batch, c))
                           for c in meta.get("concurrency", [])]
                    pts = [(c, v) for c, v in pts if v]
                    if not pts:
                        continue
                    xs = [c for c, _ in pts]
                    style = "--" if s.startswith("bare") else "-"
                    ax_tp.plot(xs, [v["rps"] for _, v in pts], style, marker="o", label=s,
                               color=colours.get(s))
                    ax_p99.plot(xs, [v["p99_ms"] for _, v in pts], style, marker="o", label=s,
                                color=colours.get(s))
                for ax, what in ((ax_tp, "requests/s"), (ax_p99, "p99 (ms)")):
                    ax.set_xscale("log", base=2)
                    ax.set_xticks(meta.get("concurrency", []))
                    ax.set_xticklabels([str(c) for c in meta.get("concurrency", [])])
                    ax.set_title(f"{PROTOCOL_TITLES[protocol]}, batch {batch}: {what}",
                                 fontsize=9)
                    ax.set_xlabel("concurrency", fontsize=8)
                    ax.grid(True, alpha=0.3)
                    ax.tick_params(labelsize=7)
                ax_p99.set_yscale("log")
                ax_p99.yaxis.set_major_formatter(ScalarFormatter())
                ax_p99.yaxis.set_minor_formatter(NullFormatter())
                ax_tp.set_ylim(bottom=0)
                ax_tp.legend(fontsize=7)
        fig.suptitle(f"{model}: throughput and p99 vs concurrency", fontsize=11)
        fig.tight_layout()
        path = out_dir / "results" / f"plot-{model}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write(jsonl: Path, out_dir: Path) -> list[Path]:
    res = Results(read(jsonl))
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(res, out_dir)
    target = out_dir / "RESULTS.md"
    notes = DEFAULT_NOTES
    if target.exists():
        text = target.read_text()
        if NOTES_START in text and NOTES_END in text:
            notes = text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0]
    target.write_text(render(res, jsonl, out_dir, plots, notes))
    return [target, *plots]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.report")
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for path in write(args.jsonl, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
