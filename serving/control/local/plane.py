"""The local control plane: the actuator and observer around the pure plan, on one machine.

Concurrency design: one asyncio loop owns all state (no locks). A single ``run`` task ticks
every ``tick`` seconds: the supervisor notices ready and crashed replicas, the autoscaler reads
the requests the router holds or has in flight, the rollout step runs on the latest scrape of
the router's metrics, and :meth:`Plane.reconcile` calls :func:`~serving.control.policy.plan.plan`
and brings processes and routes in line with what it says. The admin API
(:mod:`serving.control.local.admin`) calls into :class:`Plane` on the same loop, so an
``apply`` is never interleaved with half a tick. Decisions live in
:mod:`serving.control.policy`; this module only observes, acts and persists.
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

from prometheus_client import CollectorRegistry

from serving.control.local.actuator import LocalActuator, LocalObserver
from serving.control.local.checks import resolve, storage_problems, transformer_problems
from serving.control.local.metrics import PlaneMetrics
from serving.control.local.routerproc import RouterProcess
from serving.control.local.statefile import Saved, SavedService, StateFile
from serving.control.local.status import status
from serving.control.local.supervisor import Supervisor
from serving.control.policy import revisions as rev
from serving.control.policy import validate
from serving.control.policy.autoscale import ScaleState, Window, decide
from serving.control.policy.observe import Totals, window
from serving.control.policy.plan import Desired, Observed, plan
from serving.control.policy.ports import Observation
from serving.control.policy.rollout import step
from serving.control.policy.transformers import serving_ready
from serving.control.registry import Located, RegistryLink, RegistryProblem, follows_alias, is_registry_uri
from serving.spec import InferenceGraph, InferenceService, Manifests
from serving.spec.load import ManifestError

log = logging.getLogger("turnout.control")


@dataclass
class Scaling:
    """The autoscaler's memory for one revision (in memory: a restart starts it afresh)."""

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
    history: list[tuple[float, dict[tuple[str, str], Totals]]] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)  # revision -> requests the router holds
    metrics: PlaneMetrics = field(default_factory=lambda: PlaneMetrics(CollectorRegistry()))
    desired: Desired | None = None
    observation: Observation = field(default_factory=Observation)
    trusted_sources: tuple[str, ...] = ()  # remote prefixes whose pickles may be served
    model_roots: tuple[Path, ...] = ()     # local models must be inside one; empty: anywhere
    registry: RegistryLink | None = None   # models:/ URIs; default: SQLite under state_dir
    registry_poll: float = 30.0            # seconds between alias checks (0: only on refresh)
    _statefile: StateFile = field(init=False)
    _pids: str = ""
    _polled: dict[str, float] = field(default_factory=dict)   # service -> last alias check
    _polling: asyncio.Task[None] | None = None
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(self.state_dir / "logs",
                                     trusted_sources=self.trusted_sources)
        self.observer = LocalObserver(self.supervisor, self.router)
        self.actuator = LocalActuator(self.supervisor, self.router)
        self._statefile = StateFile(self.state_dir / "state.json")
        if self.registry is None:
            self.registry = RegistryLink(state_dir=self.state_dir)
        self.metrics.watch(lambda: status(self))

    def _set(self, name: str, state: rev.ServiceState) -> None:
        """The one way a service's state changes, so every new event is counted once."""
        events = rev.new_events(self.states.get(name), state)
        self.metrics.record(name, events)
        self.states[name] = state
        self._record_outcomes(name, state, events)

    def _record_outcomes(self, name: str, state: rev.ServiceState, events: list[rev.Event]) -> None:
        """A promoted or rolled-back registry version gets a tag saying so (in the background:
        the registry may be slow or down, and the rollout must not wait for it)."""
        for event in events:
            if event.kind == "promoted":
                revision, outcome = state.revisions.get(state.stable), "promoted"
            elif event.kind == "rolled_back" and state.canary is not None:
                revision, outcome = state.revisions.get(state.canary), "rolled-back"
            else:
                continue
            if revision is None or not revision.pinned_uri or self.registry is None:
                continue
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a synchronous caller): nothing to write with
                return
            task = loop.create_task(self._tag(
                revision.pinned_uri, outcome=outcome, reason=event.message, service=name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _tag(self, pinned_uri: str, *, outcome: str, reason: str, service: str) -> None:
        assert self.registry is not None
        try:
            await asyncio.to_thread(self.registry.record, pinned_uri, outcome=outcome,
                                    reason=reason, service=service)
        except RegistryProblem as exc:
            log.warning("%s: could not tag %s as %s in the registry: %s", service, pinned_uri,
                        outcome, exc)

    # -- state that survives restarts -------------------------------------------------------

    def restore(self) -> list[str]:
        """Read ``state.json`` back (raises StateFileError); returns the services restored."""
        saved = self._statefile.read()
        for name, entry in saved.services.items():
            self.services[name] = (entry.manifest, entry.base)
            self.states[name] = entry.state
            self.metrics.record(name, [])
        self.graphs.update(saved.graphs)
        return sorted(saved.services)

    def save(self) -> None:
        """Persist the state if it changed since the last write (atomic rename)."""
        self._statefile.write(Saved(
            services={n: SavedService(self.services[n][0], self.services[n][1], s)
                      for n, s in self.states.items()},
            graphs=dict(self.graphs)))
        # Process ids per revision, for operators (and tests) who need to find a replica.
        processes = {revision: [r.process.pid for r in replicas if r.process is not None]
                     for revision, replicas in self.supervisor.replicas.items()}
        if self.router.process is not None:  # so a later `up` can stop it if this plane dies
            processes["router"] = [self.router.process.pid]
        pids = json.dumps(processes)
        if pids != self._pids:
            (self.state_dir / "replicas.json").write_text(pids)
            self._pids = pids

    # -- manifests --------------------------------------------------------------------------

    async def locate(self, manifests: Manifests) -> tuple[dict[str, Located], list[str]]:
        """Resolve the set's ``models:/`` URIs through the registry: what each pins, and the
        problems (unknown model, version or alias; registry unreachable) as ``where: what``."""
        located: dict[str, Located] = {}
        problems: list[str] = []
        for isvc in manifests.services:
            uri = isvc.spec.predictor.resolved().storageUri or ""
            if not is_registry_uri(uri):
                continue
            assert self.registry is not None
            try:
                located[isvc.name] = await asyncio.to_thread(self.registry.locate, uri)
            except RegistryProblem as exc:
                problems.append(f"InferenceService {isvc.name}: storageUri {uri!r}: {exc}")
        return located, problems

    def check(self, manifests: Manifests, problems: list[str] | None = None) -> None:
        """Refuse the whole set unless everything in it, with what runs already, can run.

        Raises :class:`ManifestError` listing every problem as ``where: what`` (``problems``:
        ones found before, such as registry URIs that do not resolve); nothing is stored or
        changed before this passes.
        """
        services = {n: s for n, (s, _) in self.services.items()}
        services.update({s.name: s for s in manifests.services})
        graphs = {**self.graphs, **{g.name: g for g in manifests.graphs}}
        found = validate.problems(services, graphs) + list(problems or [])
        for isvc in manifests.services:
            if is_registry_uri(isvc.spec.predictor.resolved().storageUri or ""):
                continue  # resolved through the registry (see locate)
            base = manifests.sources[isvc.name].parent
            found += [f"InferenceService {isvc.name}: {p}"
                      for p in storage_problems(isvc, base, self.trusted_sources,
                                                self.model_roots)]
        for isvc in manifests.services:
            found += [f"InferenceService {isvc.name}: {p}" for p in transformer_problems(
                isvc, manifests.sources[isvc.name].parent, self.model_roots)]
        if found:
            raise ManifestError("invalid manifests:\n  " + "\n  ".join(sorted(set(found),
                                                                            key=found.index)))

    async def apply(self, manifests: Manifests) -> list[str]:
        """Apply services and graphs (others stay as they are); returns the new events."""
        located, problems = await self.locate(manifests)
        self.check(manifests, problems)
        now = time.time()
        before = dict(self.states)
        for isvc in manifests.services:
            base = manifests.sources[isvc.name].parent
            uri = isvc.spec.predictor.resolved().storageUri or ""
            self.services[isvc.name] = (isvc, base)
            found = located.get(isvc.name)
            self._polled[isvc.name] = time.monotonic()
            self._set(isvc.name, rev.apply_manifest(
                self.states.get(isvc.name), isvc, now=now,
                resolved_uri=found.location if found else resolve(uri, base),
                pin=found.pin if found else None, transformer_uri=_transformer_uri(isvc, base)))
        for graph in manifests.graphs:
            self.graphs[graph.name] = graph
        await self.reconcile()
        return [e.message for name, s in self.states.items()
                for e in rev.new_events(before.get(name), s)]

    async def delete(self, services: list[str], graphs: list[str]) -> list[str]:
        """Remove services and graphs; their replicas drain and stop. A service a remaining
        graph still uses cannot go (delete the graph too)."""
        unknown = [f"InferenceService {n}" for n in services if n not in self.states] + \
            [f"InferenceGraph {n}" for n in graphs if n not in self.graphs]
        if unknown:
            raise KeyError(f"not found: {', '.join(unknown)}")
        remaining = {n: s for n, (s, _) in self.services.items() if n not in services}
        kept = {n: g for n, g in self.graphs.items() if n not in graphs}
        used = [f"InferenceGraph {n}: {p}" for n, g in kept.items()
                for p in validate.graph_problems(g, remaining)]
        if used:
            raise ManifestError("cannot delete:\n  " + "\n  ".join(used))
        for name in services:
            del self.services[name], self.states[name]
        for name in graphs:
            del self.graphs[name]
        await self.reconcile()
        return [f"deleted InferenceService {n}" for n in services] + \
            [f"deleted InferenceGraph {n}" for n in graphs]

    async def refresh(self, name: str) -> str:
        """Resolve the service's registry alias now (``turnout rollout refresh``); a version
        other than the latest revision's starts a canary of it. Returns what happened."""
        entry = self.services.get(name)
        if entry is None:
            raise KeyError(f"no InferenceService named {name!r}")
        uri = entry[0].spec.predictor.resolved().storageUri or ""
        if not is_registry_uri(uri):
            return f"{name} does not serve from the registry ({uri}); nothing to refresh"
        return await self._follow(name)

    async def _follow(self, name: str) -> str:
        isvc, base = self.services[name]
        uri = isvc.spec.predictor.resolved().storageUri or ""
        self._polled[name] = time.monotonic()
        assert self.registry is not None
        try:
            found = await asyncio.to_thread(self.registry.locate, uri)
        except RegistryProblem as exc:
            log.warning("%s: cannot resolve %s: %s", name, uri, exc)
            return f"{name}: cannot resolve {uri}: {exc}"
        state = self.states.get(name)
        if state is None or self.services.get(name, (None,))[0] is not isvc:
            return f"{name} changed while resolving {uri}; nothing done"
        after = rev.apply_manifest(state, isvc, now=time.time(), resolved_uri=found.location,
                                   pin=found.pin, transformer_uri=_transformer_uri(isvc, base))
        if after is state or after.recorded == state.recorded:
            return f"{name}: {uri} is still {found.pinned_uri}; nothing to do"
        log.info("%s: %s moved to %s: %s", name, uri, found.pinned_uri, after.events[-1].message)
        self._set(name, after)
        await self.reconcile()
        return after.events[-1].message

    def _poll_registry(self) -> None:
        """Start one background check of the registry aliases that are due (never two at once,
        never on the loop: the registry may be slow)."""
        if self.registry_poll <= 0 or (self._polling is not None and not self._polling.done()):
            return
        now = time.monotonic()
        due = [n for n, (isvc, _) in self.services.items()
               if follows_alias(isvc.spec.predictor.resolved().storageUri or "")
               and now - self._polled.get(n, 0.0) >= self.registry_poll]
        if due:
            self._polling = asyncio.get_running_loop().create_task(self._follow_all(due))

    async def _follow_all(self, names: list[str]) -> None:
        for name in names:
            if name in self.services:
                try:
                    await self._follow(name)
                except Exception:  # one service's registry trouble must not stop the others
                    log.exception("%s: following the registry alias failed", name)

    async def promote(self, name: str) -> str:
        return await self._decide(name, rev.promote, "promoted from the CLI")

    async def rollback(self, name: str) -> str:
        return await self._decide(name, rev.rollback, "rolled back from the CLI")

    async def pause(self, name: str) -> str:
        """Stop the rollout analysis; the canary keeps its share until resumed or decided."""
        return await self._decide(name, rev.pause, "paused from the CLI",
                                  when=("progressing",), what="rollout in progress")

    async def resume(self, name: str) -> str:
        isvc = self.services.get(name, (None,))[0]
        if isvc is not None and not (isvc.spec.turnout and isvc.spec.turnout.rollout):
            return f"{name} has no spec.turnout.rollout to resume; nothing to do"
        return await self._decide(name, rev.resume, "resumed from the CLI",
                                  when=("canary",), what="paused rollout")

    async def _decide(self, name: str, action: Any, reason: str, *,
                      when: tuple[str, ...] | None = None, what: str = "") -> str:
        state = self.states.get(name)
        if state is None:
            raise KeyError(f"no InferenceService named {name!r}")
        if state.canary is None:
            return f"{name} has no canary; nothing to do"
        if when is not None and state.phase not in when:
            return f"{name} has no {what} ({state.phase}); nothing to do"
        self._set(name, action(state, now=time.time(), reason=reason))
        await self.reconcile()
        return self.states[name].events[-1].message

    # -- acting -----------------------------------------------------------------------------

    async def reconcile(self, observation: Observation | None = None) -> None:
        """Plan from ``observation`` (a fresh one when None) and act on it."""
        self.observation = observation or await self.observer.observe(counters=False)
        services = [(self.services[n][0], s) for n, s in self.states.items()]
        try:
            desired = plan(services=services, graphs=list(self.graphs.values()),
                           observed=Observed(endpoints=self.observation.endpoints,
                                             replicas={r: s.state.replicas
                                                       for r, s in self.scaling.items()}),
                           run_images=False,  # KServe's container transformers: a cluster's
                           # a manifest's logger without url writes here (docs/observability.md)
                           payload_log=str((self.state_dir / "payloads.jsonl").resolve()))
        except Exception:  # validated at apply; never let one bad plan stop every service
            log.exception("planning failed; routes and replicas stay as they are")
            return
        self.desired = desired
        for revision, workload in desired.workloads.items():
            if revision not in self.scaling:
                self.scaling[revision] = Scaling(
                    ScaleState(workload.replicas, last_active=time.monotonic()),
                    Window(workload.policy.stable_window), Window(workload.policy.panic_window))
        for revision in [r for r in self.scaling if r not in desired.workloads]:
            del self.scaling[revision]
        await self.actuator.act(desired)
        self.save()

    def at_zero(self) -> frozenset[str]:
        return frozenset(r for r, s in self.scaling.items() if s.state.replicas == 0)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        last_scrape = 0.0
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.tick)
            if stop.is_set():
                break
            try:
                if await self.router.watch():
                    self.actuator.forget_routes()  # a new router process: push them again
                await self.supervisor.tick()  # before observing: readiness is fresh
                scrape = time.monotonic() - last_scrape >= 1.0
                observation = await self.observer.observe(counters=scrape)
                self._autoscale(observation)
                if observation.counters is not None:
                    last_scrape = time.monotonic()
                    self.history = [h for h in self.history if h[0] > last_scrape - 60] + \
                        [(last_scrape, dict(observation.counters))]
                    self._rollouts()
                self._poll_registry()
                await self.reconcile(observation)
            except Exception:  # one bad tick must not end supervision
                log.exception("control loop tick failed")

    def latest(self) -> dict[tuple[str, str], Totals]:
        return self.history[-1][1] if self.history else {}

    def _rollouts(self) -> None:
        now, current = time.time(), self.latest()
        for name, state in list(self.states.items()):
            isvc = self.services[name][0]
            rollout = isvc.spec.turnout.rollout if isvc.spec.turnout else None
            ready = state.canary is not None and serving_ready(
                state.canary, state.revisions[state.canary].transformer,
                {r for r in self.supervisor.replicas if self.supervisor.ready(r)},
                run_images=False)
            after = step(state, rollout, canary=current.get((name, "canary")),
                         stable=current.get((name, "stable")), canary_ready=ready, now=now)
            if after is not state:
                if after.recorded != state.recorded:
                    log.info("%s: %s", name, after.events[-1].message)
                self._set(name, after)

    def _autoscale(self, observation: Observation) -> None:
        desired = self.desired
        if desired is None:
            return
        now = time.monotonic()
        self.held = {}
        for revision, workload in desired.workloads.items():
            scaling = self.scaling.get(revision)
            if scaling is None:
                continue
            key = (workload.service, workload.role)
            waiting = observation.held.get(key, 0)
            self.held[revision] = waiting
            value = self._rps(*key) if workload.policy.metric == "rps" else \
                float(observation.in_flight.get(key, 0) + waiting)
            scaling.stable.add(now, value)
            scaling.panic.add(now, value)
            decision = decide(policy=workload.policy, state=scaling.state,
                              stable_load=scaling.stable.average(),
                              panic_load=scaling.panic.average(), waiting=waiting, now=now)
            if decision.replicas != scaling.state.replicas:
                log.info("%s/%s (%s): %s", workload.service, workload.role, revision,
                         decision.reason)
                self._set(workload.service, rev.record_event(
                    self.states[workload.service], time.time(), "scaled",
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
        if self._polling is not None:
            self._polling.cancel()
        if self._background:  # rollout tags being written: give them a moment
            await asyncio.wait(self._background, timeout=5)
        self.save()
        await self.router.stop()
        await self.supervisor.stop_all()


def _transformer_uri(isvc: InferenceService, base: Path) -> str | None:
    """The absolute folder of ``spec.transformer.turnout`` (None without one)."""
    spec = isvc.spec.transformer
    return resolve(spec.turnout.storageUri, base) if spec and spec.turnout else None
