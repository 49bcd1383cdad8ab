"""Driving ``turnout up`` as a user would, for the end-to-end tests: a plane in a folder, its CLI,
its public router ports, its admin API and the metrics of everything it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import basetemp, free_port

PLUGINS = Path(__file__).parent / "plugins"
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def isvc(name: str, uri: str, *, percent: int | None = None, turnout: dict | None = None,
         **predictor: object) -> dict:
    pred: dict = {**predictor, "model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}}
    if percent is not None:
        pred["canaryTrafficPercent"] = percent
    spec: dict = {"predictor": pred}
    if turnout:
        spec["turnout"] = turnout
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name}, "spec": spec}


def _model_root(folder: Path, args: tuple[str, ...], wanted: bool) -> tuple[str, ...]:
    """The tests' models live in other temporary folders than the plane's own."""
    if not wanted or "--model-root" in args or "--any-model-path" in args:
        return ()
    return ("--model-root", str(basetemp(folder)), "--model-root", str(folder))


class Up:
    def __init__(self, folder: Path, *docs: dict, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = (), test_model_root: bool = True) -> None:
        self.folder = folder
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(PLUGINS), os.environ.get("PYTHONPATH", "")]), **(env or {})}
        self.write("manifest.yaml", *docs)
        self.log = (folder / "up.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "up", "-f", "manifest.yaml", "--http-port",
             str(self.http_port), "--grpc-port", str(self.grpc_port), *args,
             *_model_root(folder, args, test_model_root)],
            cwd=folder, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def write(self, name: str, *docs: dict) -> str:
        (self.folder / name).write_text(yaml.safe_dump_all(docs))
        return name

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def cli_fails(self, *args: str) -> str:
        """Run a CLI command that must fail cleanly: its stderr (never a traceback)."""
        done = subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, done.stdout
        assert "Traceback" not in done.stderr, done.stderr
        return done.stderr

    def status(self, name: str | None = None) -> dict:
        """One service of ``turnout status -o json``: ``name``, or the first."""
        services = json.loads(self.cli("status", "-o", "json"))["services"]
        return next(s for s in services if name is None or s["name"] == name)

    def variant(self, role: str, service: str | None = None) -> dict:
        return next(v for v in self.status(service)["variants"] if v["role"] == role)

    def plane_metrics(self) -> str:
        """The plane's own /metrics, from its admin API (found in .turnout/plane.json)."""
        admin = json.loads((self.folder / ".turnout" / "plane.json").read_text())["admin"]
        response = httpx.get(f"{admin}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def router_metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def logs(self) -> str:
        """The plane's output and the end of its router's log: what a failed start says."""
        router = self.folder / ".turnout" / "logs" / "router.log"
        tail = router.read_text()[-2000:] if router.exists() else "(no router log)"
        return f"{(self.folder / 'up.log').read_text()}\n--- router.log ---\n{tail}"

    def wait(self, check: Callable[[], object], timeout: float = 60, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs()
            try:
                if check():
                    return
            except (httpx.HTTPError, AssertionError, KeyError, IndexError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what}: {self.status()}")

    def infer(self) -> int:
        # generous: a cold start (scale from zero) on a busy 2-core CI machine can take 10-20 s
        return httpx.post(f"{self.url}/v2/models/iris/infer", json=ROW, timeout=60).status_code

    def variant_counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith("turnout_router_requests_total{") and 'service="iris"' in line:
                variant = line.split('variant="')[1].split('"')[0]
                counts[variant] = counts.get(variant, 0) + float(line.rsplit(" ", 1)[1])
        return counts

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()
        return self.proc.returncode


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def sample(text: str, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` with exactly ``labels``; None when there is none."""
    found = [s.value for family in text_string_to_metric_families(text) for s in family.samples
             if s.name == name and s.labels == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def events(plane: Up, service: str = "iris") -> dict[str, float]:
    """The plane's rollout event counters of ``service``, by event kind."""
    text = plane.plane_metrics()
    kinds = ("created", "started", "step", "held", "promoted", "rolled_back")
    counts = {k: sample(text, "turnout_rollout_events_total", service=service, event=k)
              for k in kinds}
    assert None not in counts.values(), counts  # every kind is exported from 0, for rate()
    return {k: float(v or 0) for k, v in counts.items()}


def gauges_match_status(plane: Up, service: str = "iris") -> bool:
    """The plane's gauges say what ``turnout status`` says, label for label."""
    state, text = plane.status(service), plane.plane_metrics()
    want = {("percent", ""): float(state["canary_percent"]), ("phase", state["phase"]): 1.0}
    got = {("percent", ""): sample(text, "turnout_rollout_canary_percent", service=service),
           ("phase", state["phase"]): sample(text, "turnout_rollout_phase", service=service,
                                              phase=state["phase"])}
    for v in state["variants"]:
        for kind in ("desired", "ready"):
            count = v["replicas"][kind]
            want[(v["revision"], kind)] = None if count is None else float(count)
            got[(v["revision"], kind)] = sample(text, "turnout_replicas", service=service,
                                                revision=v["revision"], role=v["role"], state=kind)
    served = {line.split('revision="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("turnout_replicas{") and f'service="{service}"' in line}
    assert got == want, (got, want)
    return served == {v["revision"] for v in state["variants"]}  # no stale revision
