"""``turnout up``'s observer and actuator: replica processes and the router's admin API.

The observer reads which replicas are ready (the supervisor), what the router has in flight
and holds per variant (its admin ``/status``) and, when asked, its request counters (its
``/metrics``). The actuator scales each revision's processes to the plan's replica count,
stops the replicas of revisions the plan no longer has (after the routes stop naming them,
so they drain without new requests), and pushes the routes when they changed.

A revision's transformer is one more set of ``turnout serve`` processes
(``--transformer-for @FILE``): FILE lists the predictor's ready replicas and is rewritten
here whenever they change, so the transformer follows restarts and scaling without restarting.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from serving.control.local.routerproc import RouterProcess
from serving.control.local.supervisor import Replica, ReplicaSpec, Supervisor
from serving.control.policy.observe import parse_router_metrics
from serving.control.policy.plan import Desired
from serving.control.policy.ports import Observation, VariantKey
from serving.control.policy.routes import Endpoints
from serving.control.policy.transformers import THREADS, TransformerWorkload


class LocalObserver:
    def __init__(self, supervisor: Supervisor, router: RouterProcess) -> None:
        self.supervisor = supervisor
        self.router = router

    async def observe(self, *, counters: bool) -> Observation:
        endpoints = {revision: Endpoints([r.http for r in self.supervisor.ready(revision)],
                                         [r.grpc for r in self.supervisor.ready(revision)])
                     for revision in self.supervisor.replicas}
        in_flight: dict[VariantKey, int] = {}
        held: dict[VariantKey, int] = {}
        status = await self.router.get("/status")
        if status is not None:
            for row in json.loads(status).get("endpoints", []):
                key = (row["service"], row["variant"])
                in_flight[key] = in_flight.get(key, 0) + int(row.get("pending", 0))
                held[key] = max(held.get(key, 0), int(row.get("held", 0)))
        totals = None
        if counters:
            text = await self.router.get("/metrics")  # admin: the public port may be mTLS
            totals = parse_router_metrics(text) if text is not None else None
        return Observation(endpoints=endpoints, in_flight=in_flight, held=held, counters=totals)


class LocalActuator:
    def __init__(self, supervisor: Supervisor, router: RouterProcess,
                 transformer_dir: Path | None = None) -> None:
        self.supervisor = supervisor
        self.router = router
        self.transformer_dir = transformer_dir or supervisor.log_dir.parent / "transformers"
        self._written: dict[Path, str] = {}
        self._pushed = ""
        self._stopping: set[asyncio.Task[None]] = set()

    def forget_routes(self) -> None:
        """The router restarted: push the routes again even if unchanged."""
        self._pushed = ""

    async def act(self, desired: Desired) -> None:
        to_stop: list[Replica] = []
        for revision, workload in desired.workloads.items():
            spec = ReplicaSpec(revision, workload.model_name, workload.storage_uri,
                               workload.runtime, workload.max_batch_size,
                               workload.max_batch_latency_ms, workload.model_version)
            to_stop += await self.supervisor.scale(spec, workload.replicas)
        running = set(desired.workloads)
        for revision, transformer in desired.transformers.items():
            if transformer.runs_locally:
                running.add(transformer.name)
                to_stop += await self.supervisor.scale(self._transformer(revision, transformer),
                                                       transformer.replicas)
        for revision, replicas in self.supervisor.replicas.items():
            if revision not in running:
                to_stop += [r for r in replicas if r.state != "stopping"]
                for r in replicas:
                    r.state = "stopping"
        text = yaml.safe_dump(desired.routes.model_dump(mode="json", by_alias=True,
                                                        exclude_none=True), sort_keys=False)
        if text != self._pushed and await self.router.put_config(text):
            self._pushed = text
        if to_stop:  # out of the routes first (above), then drained
            task = asyncio.create_task(self.supervisor.stop(to_stop))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _transformer(self, revision: str, workload: TransformerWorkload) -> ReplicaSpec:
        """The transformer's ``turnout serve`` flags, after writing its predictor's ready
        replicas where it reads them."""
        path = self.transformer_dir / f"{revision}.json"
        ready = self.supervisor.ready(revision)
        text = json.dumps({"http": [r.http for r in ready], "grpc": [r.grpc for r in ready]})
        if self._written.get(path) != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)  # atomic: the transformer never reads half a list
            self._written[path] = text
        spec = workload.transformer
        assert spec.model_class is not None
        flags = ("--model-class", spec.model_class, "--transformer-for", f"@{path}",
                 "--inference-threads", str(THREADS),
                 "--predictor-protocol", spec.protocol, "--predictor-model", workload.model_name)
        if spec.timeout_seconds:
            flags += ("--predictor-timeout", str(spec.timeout_seconds))
        return ReplicaSpec(workload.name, workload.model_name, spec.resolved_uri, extra=flags)
