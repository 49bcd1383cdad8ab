"""The local control plane: router + model server processes driven by manifests and policies.

Concurrency design: one asyncio loop owns all state (no locks). A single ``_loop`` task ticks
every ``tick`` seconds: the supervisor notices ready and crashed replicas, the autoscaler samples
the router's per-variant concurrency, the rollout analysis runs when a step's interval is over,
and the router's routes are re-pushed whenever what they would say changes. The admin API
(:mod:`serving.control.local.admin`) calls into :class:`Plane` on the same loop, so an ``apply``
is never interleaved with half a tick. The pure policies (revisions, routes, rollout,
autoscale) decide; this module only observes and acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from serving.control.local.metrics import PlaneMetrics
from serving.control.local.routerproc import RouterProcess
from serving.control.local.status import status
from serving.control.local.storage import StorageError, local_path
from serving.control.local.supervisor import ReplicaSpec, Supervisor
from serving.control.policy import revisions as rev
from serving.control.policy.autoscale import ScalePolicy, ScaleState, Window, decide
from serving.control.policy.observe import Totals, parse_router_metrics, window
from serving.control.policy.rollout import analyse
from serving.control.policy.routes import Endpoints, router_config
from serving.spec import InferenceGraph, InferenceService, Manifests
from serving.spec.load import ManifestError

log = logging.getLogger("turnout.control")


@dataclass
class Scaling:
    """The autoscaler's memory for one revision."""

    state: ScaleState
    stable: Window
    panic: Window
    reason: str = ""


@dataclass
class Plane:
    state_dir: Path
    router: RouterProcess
    tick: float = 0.25
    services: dict[str, tuple[InferenceService, Path]] = field(default_factory=dict)
    graphs: dict[str, InferenceGraph] = field(default_factory=dict)
    states: dict[str, rev.ServiceState] = field(default_factory=dict)
    supervisor: Supervisor = field(init=False)
    scaling: dict[str, Scaling] = field(default_factory=dict)
    snapshots: dict[str, dict[tuple[str, str], Totals]] = field(default_factory=dict)
    history: list[tuple[float, dict[tuple[str, str], Totals]]] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)  # revision -> requests held (activator)
    activator: Endpoints | None = None
    metrics: PlaneMetrics = field(default_factory=lambda: PlaneMetrics(CollectorRegistry()))
    _pushed: str = ""
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(self.state_dir / "logs")
        self.metrics.watch(lambda: status(self))

    def _set(self, name: str, state: rev.ServiceState) -> None:
        """The one way a service's state changes, so every new event is counted once."""
        self.metrics.record(name, rev.new_events(self.states.get(name), state))
        self.states[name] = state

    # -- manifests --------------------------------------------------------------------------

    def check(self, manifests: Manifests) -> None:
        """Refuse manifests whose models are not on this machine, before anything changes."""
        problems = []
        for isvc in manifests.services:
            uri = isvc.spec.predictor.resolved().storageUri or ""
            try:
                path = local_path(uri, base=manifests.sources[isvc.name].parent)
            except StorageError as exc:
                problems.append(f"{isvc.name}: spec.predictor: {exc}")
                continue
            if not path.exists():
                problems.append(f"{isvc.name}: spec.predictor storageUri {uri!r}: {path} does not "
                                "exist")
        if problems:
            raise ManifestError("invalid manifests:\n  " + "\n  ".join(problems))

    async def apply(self, manifests: Manifests) -> list[str]:
        """Apply services and graphs (others stay as they are); returns the new events."""
        self.check(manifests)
        now = time.time()
        before = dict(self.states)
        for isvc in manifests.services:
            self.services[isvc.name] = (isvc, manifests.sources[isvc.name].parent)
            self._set(isvc.name, rev.apply_manifest(self.states.get(isvc.name), isvc, now=now))
        for graph in manifests.graphs:
            self.graphs[graph.name] = graph
        await self.reconcile()
        return [e.message for name, s in self.states.items()
                for e in rev.new_events(before.get(name), s)]

    async def promote(self, name: str) -> str:
        return await self._decide(name, rev.promote, "promoted from the CLI")

    async def rollback(self, name: str) -> str:
        return await self._decide(name, rev.rollback, "rolled back from the CLI")

    async def _decide(self, name: str, action: Any, reason: str) -> str:
        state = self.states.get(name)
        if state is None:
            raise KeyError(f"no InferenceService named {name!r}")
        if state.canary is None:
            return f"{name} has no canary; nothing to do"
        self._set(name, action(state, now=time.time(), reason=reason))
        await self.reconcile()
        return self.states[name].events[-1].message

    # -- acting -----------------------------------------------------------------------------

    def _policy(self, isvc: InferenceService) -> ScalePolicy:
        p = isvc.spec.predictor
        extra = isvc.spec.turnout.autoscaling if isvc.spec.turnout else None
        low = 1 if p.minReplicas is None else p.minReplicas
        high = p.maxReplicas or max(low, 1)
        default_target = 200.0 if p.scaleMetric == "rps" else float(p.containerConcurrency or 100)
        policy = ScalePolicy(min_replicas=low, max_replicas=high,
                             target=float(p.scaleTarget or default_target))
        if extra is not None:
            policy = ScalePolicy(**{**policy.__dict__, "stable_window": extra.stableWindow,
                                    "panic_window": extra.panicWindow,
                                    "panic_threshold": extra.panicThreshold,
                                    "scale_to_zero_grace": extra.scaleToZeroGrace,
                                    "max_scale_up_rate": extra.maxScaleUpRate,
                                    "max_scale_down_rate": extra.maxScaleDownRate})
        return policy

    def _scaling(self, revision: str, policy: ScalePolicy) -> Scaling:
        scaling = self.scaling.get(revision)
        if scaling is None:
            scaling = self.scaling[revision] = Scaling(
                ScaleState(policy.min_replicas, last_active=time.monotonic()),
                Window(policy.stable_window), Window(policy.panic_window))
        return scaling

    async def reconcile(self) -> None:
        """Bring processes and routes in line with the states and scaling decisions."""
        wanted: dict[str, tuple[ReplicaSpec, int]] = {}
        for name, state in self.states.items():
            isvc, base = self.services[name]
            policy = self._policy(isvc)
            for revision in state.serving().values():
                r = state.revisions[revision]
                spec = ReplicaSpec(revision, name, local_path(r.storage_uri, base=base),
                                   r.max_batch_size, r.max_batch_latency_ms)
                wanted[revision] = (spec, self._scaling(revision, policy).state.replicas)
        to_stop = []
        for spec, count in wanted.values():
            to_stop += await self.supervisor.scale(spec, count)
        for revision, replicas in self.supervisor.replicas.items():
            if revision not in wanted:
                to_stop += [r for r in replicas if r.state != "stopping"]
                for r in replicas:
                    r.state = "stopping"
        await self.push_routes()
        if to_stop:
            asyncio.create_task(self.supervisor.stop(to_stop))
        self.save()

    def at_zero(self) -> frozenset[str]:
        return frozenset(r for r, s in self.scaling.items() if s.state.replicas == 0)

    async def push_routes(self) -> None:
        endpoints = {revision: Endpoints([r.http for r in self.supervisor.ready(revision)],
                                         [r.grpc for r in self.supervisor.ready(revision)])
                     for revision in self.supervisor.replicas}
        plan = router_config(
            services=[(self.services[n][0], s) for n, s in self.states.items()],
            endpoints=endpoints, graphs=list(self.graphs.values()), activator=self.activator,
            at_zero=self.at_zero())
        text = yaml.safe_dump(plan.config.model_dump(mode="json", by_alias=True, exclude_none=True),
                              sort_keys=False)
        if text != self._pushed and await self.router.put_config(text):
            self._pushed = text

    def save(self) -> None:
        doc = {name: state.model_dump(mode="json") for name, state in self.states.items()}
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.state_dir / "state.json")
        # Process ids per revision, for operators (and tests) who need to find a replica.
        pids = {revision: [r.process.pid for r in replicas if r.process is not None]
                for revision, replicas in self.supervisor.replicas.items()}
        (self.state_dir / "replicas.json").write_text(json.dumps(pids))

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        last_scrape = 0.0
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick)
            if stop.is_set():
                break
            try:
                await self.router.watch()
                changed = await self.supervisor.tick()
                await self._autoscale()
                if time.monotonic() - last_scrape >= 1.0:
                    last_scrape = time.monotonic()
                    await self._scrape()
                    changed = await self._rollouts() or changed
                if changed:
                    self.save()
                await self.reconcile()
            except Exception:  # one bad tick must not end supervision
                log.exception("control loop tick failed")

    async def _scrape(self) -> None:
        text = await self.router.get("/metrics", public=True)
        if text is None:
            return
        now = time.monotonic()
        self.history = [h for h in self.history if h[0] > now - 60] + \
            [(now, parse_router_metrics(text))]

    def latest(self) -> dict[tuple[str, str], Totals]:
        return self.history[-1][1] if self.history else {}

    async def _rollouts(self) -> bool:
        changed = False
        now = time.time()
        for name, state in list(self.states.items()):
            isvc = self.services[name][0]
            rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
            if state.phase != "progressing" or rollout is None or state.canary is None:
                self.snapshots.pop(name, None)
                continue
            if name not in self.snapshots or not self.supervisor.ready(state.canary):
                # The interval counts from when the canary can actually take its share.
                self.snapshots[name] = self.latest()
                self._set(name, state.model_copy(update={"step_started": now}))
                continue
            if now - state.step_started < rollout.interval:
                continue
            then, current = self.snapshots[name], self.latest()
            verdict = analyse(analysis=rollout.analysis, steps=rollout.steps, percent=state.percent,
                              holds=state.holds,
                              canary=window(current.get((name, "canary")), then.get((name, "canary"))),
                              stable=window(current.get((name, "stable")), then.get((name, "stable"))))
            if verdict.action == "promote":
                state = rev.promote(state, now=now, reason=verdict.reason)
            elif verdict.action == "rollback":
                state = rev.rollback(state, now=now, reason=verdict.reason)
            elif verdict.action == "advance":
                state = rev.set_step(state, verdict.percent, now=now, reason=verdict.reason)
            else:
                state = rev.hold(state, now=now, reason=verdict.reason)
            log.info("%s: %s", name, state.events[-1].message)
            self._set(name, state)
            if verdict.action != "hold":  # a hold waits for more data: the window grows
                self.snapshots[name] = current
            changed = True
        return changed

    async def _autoscale(self) -> None:
        status = await self.router.get("/status")
        pending: dict[tuple[str, str], int] = {}
        if status is not None:
            for row in json.loads(status).get("endpoints", []):
                pending[(row["service"], row["variant"])] = int(row.get("pending", 0))
        now = time.monotonic()
        for name, state in self.states.items():
            isvc = self.services[name][0]
            policy = self._policy(isvc)
            rps = isvc.spec.predictor.scaleMetric == "rps"
            for role, revision in state.serving().items():
                scaling = self._scaling(revision, policy)
                load = self._rps(name, role) if rps else float(pending.get((name, role), 0))
                scaling.stable.add(now, load)
                scaling.panic.add(now, load)
                decision = decide(policy=policy, state=scaling.state,
                                  stable_load=scaling.stable.average(),
                                  panic_load=scaling.panic.average(),
                                  waiting=self.waiting.get(revision, 0), now=now)
                if decision.replicas != scaling.state.replicas:
                    log.info("%s/%s (%s): %s", name, role, revision, decision.reason)
                    self._set(name, rev.record_event(self.states[name], time.time(), "scaled",
                                                     f"{revision}: replicas {decision.reason}"))
                    scaling.reason = decision.reason
                scaling.state = decision.state

    def _rps(self, service: str, role: str, seconds: float = 10.0) -> float:
        if len(self.history) < 2:
            return 0.0
        now_t, now = self.history[-1]
        then_t, then = next(((t, h) for t, h in self.history if t >= now_t - seconds), self.history[0])
        if now_t <= then_t:
            return 0.0
        key = (service, role)
        return window(now.get(key), then.get(key)).requests / (now_t - then_t)

    async def shutdown(self) -> None:
        await self.router.stop()
        await self.supervisor.stop_all()
        self.save()
