"""The Grafana dashboard queries only what the code exports.

Every PromQL expression of the dashboard (panel targets and template variable queries) is parsed
with a real PromQL parser (``promql-parser``); every metric it selects must appear in the
``/metrics`` text of a running plane: its router, its own admin API and its model servers, after
REST and gRPC traffic through a canary with a batcher. Label matchers and ``by (...)`` labels are
checked against the labels those samples carry, plus the target labels Prometheus adds when it
scrapes in Kubernetes. A modified copy of the dashboard proves the check fails on a typo.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control.planes import ROW, Up, isvc

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "turnout" / "dashboards" / "turnout.json"
# Added by Prometheus to every series it scrapes through the chart's ServiceMonitor/PodMonitor
# (the router's own "service" label wins there: honorLabels).
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "container"})
# Grafana replaces these before Prometheus sees the query.
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# Counted only on faults (retries, refusals) or while a variant scales from zero (held
# requests): exported, with no samples after healthy traffic to ready replicas.
QUIET = {"turnout_router_retries_total", "turnout_router_retry_budget_exhausted_total",
         "turnout_router_overload_rejections_total", "turnout_router_held_requests",
         "turnout_router_held_total"}

Exported = dict[str, set[str]]  # sample name -> label names its samples carry


# -- what the code exports ----------------------------------------------------------------------

def exported(*texts: str) -> tuple[Exported, set[str]]:
    """Sample names (with their labels) of exposition ``texts``, and the names that had samples.

    A family without samples still names its series (a counter ``x`` exports ``x_total``, a
    histogram ``x_bucket``/``x_sum``/``x_count``), so a labelled counter nobody has bumped yet
    counts as exported; only its labels are unknown then.
    """
    names: Exported = {}
    sampled: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                                  "_created"),
                "summary": ("_sum", "_count", "_created")}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for suffix in suffixes.get(family.type, ("",)):
                names.setdefault(family.name + suffix, set())
            for s in family.samples:
                names.setdefault(s.name, set()).update(s.labels)
                sampled.add(s.name)
    return names, sampled


# -- what the dashboard queries -----------------------------------------------------------------

def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's selector."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
        assert match, f"variable {var['name']}: not label_values(selector, label): {query}"
        # a selector plus the label it lists: checked like `sum by (label) (selector)`
        found.append((f"variable {var['name']}",
                      f"sum by ({match.group(2)}) ({match.group(1)})"))
    return found


def _selectors(node: object) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _selectors(arg)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _selectors(node.lhs)
        yield from _selectors(node.rhs)
    elif isinstance(node, (promql_parser.AggregateExpr, promql_parser.ParenExpr,
                           promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        yield from _selectors(node.expr)


def _aggregations(node: object) -> Iterator[promql_parser.AggregateExpr]:
    if isinstance(node, promql_parser.AggregateExpr):
        yield node
    for child in ("expr", "lhs", "rhs"):
        if hasattr(node, child) and not isinstance(node, promql_parser.MatrixSelector):
            yield from _aggregations(getattr(node, child))
    for arg in getattr(node, "args", None) or []:
        yield from _aggregations(arg)


def problems(dashboard: dict, names: Exported) -> list[str]:
    """Every metric or label the dashboard queries that the exports lack (empty: all good)."""
    found = []
    for where, expr in queries(dashboard):
        for macro, value in MACROS.items():
            expr = expr.replace(macro, value)
        try:
            tree = promql_parser.parse(expr)
        except Exception as exc:  # the parser raises a bare ValueError/RuntimeError subclass
            found.append(f"{where}: does not parse: {exc}")
            continue
        selectors = list(_selectors(tree))
        if not selectors:
            found.append(f"{where}: selects no metric")
        for sel in selectors:
            if sel.name not in names:
                found.append(f"{where}: no such metric {sel.name}")
                continue
            labels = names[sel.name]
            used = {m.name for m in sel.matchers.matchers} - {"__name__"}
            if labels and (missing := used - labels - TARGET_LABELS):
                found.append(f"{where}: {sel.name} has no label {sorted(missing)}")
        for agg in _aggregations(tree):
            inner = set().union(*(names.get(s.name, set()) for s in _selectors(agg.expr)))
            grouped = set(agg.modifier.labels) if agg.modifier else set()
            if inner and (missing := grouped - inner - TARGET_LABELS):
                found.append(f"{where}: grouped by {sorted(missing)}, which "
                             f"{sorted(s.name for s in _selectors(agg.expr))} lack")
    return found


# -- a real plane after real traffic --------------------------------------------------------------

@pytest.fixture(scope="module")
def plane_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exported, set[str]]]:
    import joblib
    import tritonclient.grpc as grpcclient
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    folder = tmp_path_factory.mktemp("dashboard")
    x, y = load_iris(return_X_y=True)
    for version, model in (("1", DecisionTreeClassifier(max_depth=3, random_state=0)),
                           ("2", LogisticRegression(max_iter=500))):
        (folder / "models" / version).mkdir(parents=True)
        joblib.dump(model.fit(x, y), folder / "models" / version / "model.joblib")
    plane = Up(folder, isvc("iris", "file://models/1"),
               isvc("iris", "file://models/2", percent=50,
                    batcher={"maxBatchSize": 8, "maxLatency": 2}))
    try:
        plane.wait(lambda: [v["replicas"]["ready"] for v in plane.status()["variants"]] == [1, 1],
                   what="canary up")
        plane.wait(lambda: plane.infer() == 200, what="router serving")
        for _ in range(30):
            assert plane.infer() == 200
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{plane.grpc_port}")
        for _ in range(10):
            inp = grpcclient.InferInput("x", [1, 4], "FP64")
            inp.set_data_from_numpy(np.array(ROW["inputs"][0]["data"], dtype=np.float64)[None])
            assert client.infer("iris", [inp]).as_numpy("predict").shape == (1,)
        servers = [httpx.get(f"{address}/metrics", timeout=10).text
                   for v in plane.status()["variants"] for address in v["endpoints"]["http"]]
        assert len(servers) == 2
        yield exported(plane.router_metrics(), plane.plane_metrics(), *servers)
    finally:
        assert plane.stop() == 0, (folder / "up.log").read_text()[-3000:]


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.mark.slow
def test_every_dashboard_query_selects_exported_metrics_and_labels(
        plane_metrics: tuple[Exported, set[str]]) -> None:
    names, sampled = plane_metrics
    dashboard = load()
    assert problems(dashboard, names) == []
    used = {s.name for _, q in queries(dashboard)
            for s in _selectors(promql_parser.parse(q.replace("$__rate_interval", "5m")))}
    # every panel shows data after healthy traffic, except the quiet ones
    assert used - sampled == QUIET
    assert len(used) >= 20, sorted(used)


@pytest.mark.slow
@pytest.mark.parametrize(("title", "old", "new", "expected"), [
    ("Request rate", "turnout_router_requests_total", "turnout_router_request_total",
     "no such metric turnout_router_request_total"),
    ("Batch queue time p99", "turnout_batch_queue_seconds_bucket", "turnout_batch_queue_bucket",
     "no such metric turnout_batch_queue_bucket"),
    ("Model server requests", "rate(turnout_requests_total", "rate(turnout_request_total",
     "no such metric turnout_request_total"),
    ("Request rate", 'service=~"$service"', 'model=~"$service"', "has no label ['model']"),
    ("Request rate", "sum by (service, variant)", "sum by (service, revision)",
     "grouped by ['revision']"),
    ("Request rate", "(rate(", "(rate((", "does not parse"),
])
def test_a_modified_copy_of_the_dashboard_fails(plane_metrics: tuple[Exported, set[str]],
                                                title: str, old: str, new: str,
                                                expected: str) -> None:
    names, _ = plane_metrics
    broken = copy.deepcopy(load())
    assert problems(broken, names) == []
    (panel,) = [p for p in broken["panels"] if p["title"] == title]
    target = panel["targets"][0]
    assert old in target["expr"]
    target["expr"] = target["expr"].replace(old, new, 1)
    found = problems(broken, names)
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(f"panel {title!r} A: ")


def test_a_variable_on_a_missing_metric_fails() -> None:
    names: Exported = {"turnout_router_requests_total": {"service", "variant"}}
    dashboard = {"panels": [], "templating": {"list": [
        {"name": "service", "type": "query",
         "query": {"query": "label_values(turnout_router_requests_total, service)"}},
        {"name": "model", "type": "query",
         "query": {"query": 'label_values(turnout_requests_total{model=~".*"}, model)'}},
        {"name": "variant", "type": "query",
         "query": {"query": "label_values(turnout_router_requests_total, revision)"}}]}}
    assert problems(dashboard, names) == [
        "variable model: no such metric turnout_requests_total",
        "variable variant: grouped by ['revision'], which "
        "['turnout_router_requests_total'] lack"]


def test_exported_names_follow_the_exposition_types() -> None:
    text = ("# HELP a_total c\n# TYPE a_total counter\n"
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1.0\",model=\"m\"} 1.0\n"
            "h_bucket{le=\"+Inf\",model=\"m\"} 1.0\nh_count{model=\"m\"} 1.0\n"
            "h_sum{model=\"m\"} 0.5\n# HELP g x\n# TYPE g gauge\ng 3.0\n")
    names, sampled = exported(text)
    assert names == {"a_total": set(), "a_created": set(), "h_bucket": {"le", "model"},
                     "h_sum": {"model"}, "h_count": {"model"}, "h_created": set(), "g": set()}
    assert sampled == {"h_bucket", "h_count", "h_sum", "g"}


def test_the_chart_ships_this_dashboard() -> None:
    template = (ROOT / "charts" / "turnout" / "templates" / "grafana-dashboard.yaml").read_text()
    assert '.Files.Get "dashboards/turnout.json"' in template
    dashboard = load()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "service", "variant", "revision", "model",
            "version"} <= variables
