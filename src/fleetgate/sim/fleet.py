"""The fleet simulator: N engine models on one simulated clock, behind the gateway's own router and admission rules.

Discrete events on a heap (engine steps, scrapes, admission ticks and deadlines, engine wake-ups); arrivals come
from the workload's iterator, already in time order, and are merged with the heap instead of pushed into it.
An engine has at most one valid event pending: the end of its current step, or, while its batch only decodes,
the next step boundary where something changes (DecodeBatch in decode_run.py: a sequence finishes, a request
joins, or a stretch of steps ends). Both give the same results.
"""

from __future__ import annotations

import gc
import heapq
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetgate.config import AdmissionConfig
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.routing.plugins import make_router
from fleetgate.routing.router import RouteDecision, RouteRequest
from fleetgate.scheduling.admission import AdmissionController
from fleetgate.scheduling.fair_queue import Ticket
from fleetgate.sim.admission import SimAdmission
from fleetgate.sim.decode_run import DecodeBatch
from fleetgate.sim.engine import Engine, FakeClock, Sequence, Status, Step
from fleetgate.sim.kvcache import ROOT_HASH, chain_hashes
from fleetgate.sim.profiles import Profile
from fleetgate.sim.workload import ScriptedText, SimRequest

# Event kinds, in the order they run at equal times: a step that ends at t frees room before anything new at t
# is decided; scrapes and ticks feed that decision; wake-ups go last so that every arrival of an instant joins
# the same first step (an engine core drains its whole input queue before it schedules).
STEP, SCRAPE, TICK, DEADLINE, ARRIVAL, WAKE = range(6)


@dataclass(frozen=True)
class FleetSpec:
    """The simulated fleet and gateway: replicas, their engine profile, the routing policy, admission."""

    profile: Profile
    replicas: int = 8
    policy: str = "score"
    router_params: Mapping[str, Any] | None = None
    admission: AdmissionConfig | None = field(default_factory=AdmissionConfig)  # None: no queue, no caps
    scrape_interval: float = 1.0  # seconds between metric scrapes (the gateway's routing.scrape_interval)
    model: str = "sim"
    seed: int = 0
    fast_forward: bool = True  # step decoding batches lazily (same results: see decode_run.py)
    seed_hashes: bool = True  # reuse a conversation's block hashes across turns (same results, less hashing)


@dataclass(slots=True, eq=False)
class Outcome:
    """What happened to one request."""

    index: int
    tenant: str
    arrival: float
    prompt_tokens: int
    replica: int = -1
    routed_at: float = -1.0
    scheduled_at: float = -1.0  # first admitted into the engine's batch
    first_token_at: float = -1.0
    finished_at: float = -1.0
    cached_tokens: int = 0
    output_tokens: int = 0
    status: str = "pending"  # ok, or shed:<reason> (kv_pressure, queue_full, evicted, deadline, context)
    priority: int = 1  # index into PRIORITIES


@dataclass(slots=True, eq=False)
class SimReplica:
    """One replica: the gateway's view (Replica) and the engine model behind it."""

    index: int
    replica: Replica
    engine: Engine
    step: Step | DecodeBatch | None = None
    event: int = 0  # the counter of its valid STEP event (a moved-up boundary leaves a stale one in the heap)
    woken: bool = False
    routed: int = 0
    busy: float = 0.0
    load_sum: float = 0.0
    load_max: float = 0.0
    kv_sum: float = 0.0
    samples: int = 0


Queued = tuple[SimRequest, "Outcome"]  # what waits in the simulated gateway's queue


@dataclass
class RunResult:
    """Raw results of one simulated run; report.py turns them into numbers."""

    spec: FleetSpec
    outcomes: list[Outcome]
    replicas: list[SimReplica]
    events: int
    wall_s: float
    end_time: float  # when the last request finished or was shed
    router_stats: dict[str, object]


class FleetSim:
    """One run: build with a spec, call `run(requests)` once."""

    def __init__(self, spec: FleetSpec) -> None:
        if spec.replicas < 1 or spec.scrape_interval <= 0:
            raise ValueError("a fleet needs at least one replica and a scrape interval > 0")
        self.spec = spec
        self.clock = FakeClock()
        now = self.clock.now
        self.router = make_router(spec.policy, spec.router_params, clock=now, rng=random.Random(spec.seed))
        self.replicas: list[SimReplica] = []
        for i in range(spec.replicas):
            engine = Engine(spec.profile, self.clock)
            r = Replica(f"r{i:03d}", f"sim://r{i:03d}", "vllm", {spec.model}, "sim", healthy=True)
            r.context_len = engine.max_model_len
            self.replicas.append(SimReplica(i, r, engine))
        self._by_id = {s.replica.id: s for s in self.replicas}
        self.candidates = [s.replica for s in self.replicas]
        self.admission: SimAdmission[Queued] | None = None
        if spec.admission is not None:
            controller = AdmissionController(spec.admission, ReplicaRegistry(self.candidates), now)
            self.admission = SimAdmission(controller, spec.model, self._admitted, self._shed_queued, self._deadline_at)
        self._context = min(s.engine.max_model_len for s in self.replicas)
        self._heap: list[tuple[float, int, int, Any]] = []
        self._counter = 0
        self._live: dict[Sequence, tuple[RouteDecision, Outcome]] = {}
        self._hashes: dict[str, list[int]] = {}
        self._pending_arrivals = True

    def _push(self, t: float, kind: int, obj: Any) -> int:
        self._counter += 1
        heapq.heappush(self._heap, (t, kind, self._counter, obj))
        return self._counter

    def run(self, requests: Iterable[SimRequest]) -> RunResult:
        """Replay the requests to the end (every request finishes or is shed) and return the raw results."""
        if self._counter:
            raise RuntimeError("a FleetSim runs once: build a new one for another run")
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        collecting = gc.isenabled()
        # The loop creates no reference cycles, and at 256 replicas the collector's passes over millions of live
        # objects (KV block pools, the prefix index) cost ~10% of the run: pause it, as the gateway tunes it.
        gc.disable()
        try:
            events = self._loop(iter(requests), outcomes)
        finally:
            if collecting:
                gc.enable()
        wall = time.perf_counter() - started
        # the last request's end, not the clock: leftover deadline and scrape events may run later than that
        end = max((o.finished_at for o in outcomes), default=0.0)
        return RunResult(self.spec, outcomes, self.replicas, events, wall, end, self.router.stats.snapshot())

    def _loop(self, arrivals: Iterator[SimRequest], outcomes: list[Outcome]) -> int:
        nxt = next(arrivals, None)
        heap, clock = self._heap, self.clock
        self._scrape()
        if self.admission is not None:
            self._push(self.admission.cfg.tick_interval, TICK, None)
        events = 0
        while True:
            if heap and (nxt is None or (heap[0][0], heap[0][1]) < (nxt.arrival, ARRIVAL)):
                t, kind, counter, obj = heapq.heappop(heap)
                clock.t = t
                if kind == STEP:
                    if counter != obj.event:
                        continue  # a batch boundary that was moved up for an arrival
                    self._step_done(obj)
                elif kind == WAKE:
                    obj.woken = False
                    if obj.step is None:
                        self._start(obj)
                elif kind == SCRAPE:
                    self._scrape()
                elif kind == TICK:
                    self._tick()
                elif self.admission is not None:
                    self.admission.deadline(obj)
            elif nxt is not None:
                clock.t = nxt.arrival
                out = Outcome(nxt.index, nxt.tenant, nxt.arrival, len(nxt.prompt_ids), priority=nxt.priority)
                outcomes.append(out)
                self._arrive(nxt, out)
                nxt = next(arrivals, None)
                self._pending_arrivals = nxt is not None
            else:
                return events
            events += 1

    # --- admission: the gateway's rule on simulated time (sim/admission.py) ---

    def _arrive(self, req: SimRequest, out: Outcome) -> None:
        # AdmissionController.check_context's rule (vLLM's own 400 without admission), with the fleet's smallest
        # context window found once: it scans every replica, and the simulated fleet never changes
        if len(req.prompt_ids) + req.max_tokens > self._context:
            self._shed(out, "context")
        elif self.admission is None:
            self._route(req, out)
        else:
            cost = len(req.prompt_ids) + req.max_tokens
            self.admission.arrive((req, out), req.tenant, req.priority, cost, self.clock.t)

    def _admitted(self, item: Queued) -> None:
        self._route(*item)

    def _shed_queued(self, item: Queued, reason: str) -> None:
        self._shed(item[1], reason)

    def _deadline_at(self, when: float, ticket: Ticket[Queued]) -> None:
        self._push(when, DEADLINE, ticket)

    def _shed(self, out: Outcome, reason: str) -> None:
        out.status = f"shed:{reason}"
        out.finished_at = self.clock.t

    def _tick(self) -> None:
        # The controller's ticker: capacity follows the engines' queues and scrape freshness, not only releases.
        # The controller re-reads capacity on every acquire; here on each tick and scrape, which is the same as
        # metrics change only at scrapes (and go stale only with time).
        assert self.admission is not None
        self.admission.refresh(self.clock.t)
        if self._busy():
            self._push(self.clock.t + self.admission.cfg.tick_interval, TICK, None)

    def _busy(self) -> bool:
        waiting = self.admission.waiting() if self.admission is not None else 0
        return self._pending_arrivals or bool(self._live) or bool(waiting)

    # --- routing and engines ---

    def _route(self, req: SimRequest, out: Outcome) -> None:
        now = self.clock.t
        request = RouteRequest(self.spec.model, req.tenant, req.session, req.prompt_text, None, len(req.prompt_ids))
        decision = self.router.pick(request, self.candidates)
        rep = self._by_id[decision.replica.id]
        decision.replica.in_flight += 1
        rep.routed += 1
        out.replica, out.routed_at = rep.index, now
        seq = Sequence(str(req.index), req.prompt_ids, req.max_tokens, ScriptedText(req.reply, req.reply_ids), now)
        if self.spec.seed_hashes:
            seq.hashes = self._seed(req, rep.engine.block_size)
        self._live[seq] = (decision, out)
        self._interrupt(rep, now, cut=True)
        rep.engine.add(seq)
        if rep.step is None and not rep.woken:
            rep.woken = True
            self._push(now, WAKE, rep)

    def _seed(self, req: SimRequest, block_size: int) -> list[int]:
        """The prompt's block hashes, starting from the conversation's (or its system prompt's) known ones."""
        ids = req.prompt_ids
        known = self._hashes.get(req.cache_key) if req.cache_key else None
        if known is None and req.parent_key is not None:
            known = self._hashes.get(req.parent_key)
            if known is None:
                known = self._hashes[req.parent_key] = chain_hashes(
                    ids[: req.parent_len], block_size, adapter=None, salt=None
                )
        known = list(known or ())
        known += chain_hashes(
            ids, block_size, adapter=None, salt=None, start=len(known), parent=known[-1] if known else ROOT_HASH
        )
        if req.cache_key is not None:
            if req.last_turn:
                self._hashes.pop(req.cache_key, None)
            else:
                self._hashes[req.cache_key] = known
        return list(known)  # the engine extends its own copy with the answer's blocks

    def _start(self, rep: SimReplica, batch: bool = True) -> None:
        now = self.clock.t
        if batch and self.spec.fast_forward and (lazy := DecodeBatch.enter(rep.engine, now)) is not None:
            rep.step = lazy
            if self._next_boundary(rep, lazy):
                return
        if (step := rep.engine.schedule()) is not None:
            rep.step = step
            rep.busy += step.duration
            rep.event = self._push(now + step.duration, STEP, rep)

    def _next_boundary(self, rep: SimReplica, lazy: DecodeBatch) -> bool:
        """Plan the batch's next boundary; False when it handed the engine back to its own step loop."""
        end = lazy.start_next()
        if end is None:
            rep.step = None
            rep.busy += lazy.spent
            return False
        rep.event = self._push(end, STEP, rep)
        return True

    def _step_done(self, rep: SimReplica) -> None:
        step = rep.step
        if isinstance(step, DecodeBatch):
            # the batch stays the replica's step while its finishes are reported: a request routed here meanwhile
            # waits for the admission that start_next makes at this same boundary
            for seq in step.boundary():
                self._finish(seq)
            if not self._next_boundary(rep, step):
                self._start(rep, batch=False)  # one step of the engine's own loop before trying a batch again
            return
        rep.step = None
        if step is not None:
            rep.engine.complete(step)
            for seq, _ in step.entries:
                if seq.status is Status.FINISHED:
                    self._finish(seq)
        self._start(rep)

    def _interrupt(self, rep: SimReplica, now: float, cut: bool) -> None:
        """Bring a lazy batch up to `now` (scrape), or (`cut`) move its next boundary up for a request to join."""
        lazy = rep.step
        if not isinstance(lazy, DecodeBatch):
            return
        if cut:
            end = lazy.arrival(now)
            if end is not None:
                rep.event = self._push(end, STEP, rep)
        else:
            lazy.sync(now)

    def _finish(self, seq: Sequence) -> None:
        decision, out = self._live.pop(seq)
        out.status = "ok"
        out.scheduled_at = seq.scheduled_at if seq.scheduled_at is not None else -1.0
        out.first_token_at = seq.first_token_at if seq.first_token_at is not None else -1.0
        out.finished_at = self.clock.t
        out.cached_tokens = max(seq.num_cached_tokens, 0)
        out.output_tokens = len(seq.output_ids)
        decision.replica.in_flight -= 1
        self.router.finish(decision, True)
        if self.admission is not None:
            self.admission.ended(out.tenant, out.priority, self.clock.t)

    def _scrape(self) -> None:
        """Refresh every replica's metrics, as the gateway's scraper does, then re-check admission capacity."""
        now = self.clock.t
        for rep in self.replicas:
            self._interrupt(rep, now, cut=False)
            _scrape_one(rep, now)
        if self.admission is not None:
            self.admission.refresh(now)
        if self._busy():
            self._push(now + self.spec.scrape_interval, SCRAPE, None)


def _scrape_one(rep: SimReplica, now: float) -> ReplicaMetrics:
    """What the scraper would parse from this engine's /metrics right now."""
    e = rep.engine
    s = e.stats
    pool = e.pool
    m = ReplicaMetrics(
        scraped_at=now,
        waiting=float(len(e.waiting)),
        running=float(len(e.running)),
        kv_usage=pool.usage(),
        prefix_queries=float(s.prefix_queries),
        prefix_hits=float(s.prefix_hits),
        prompt_tokens=float(s.prompt_tokens),
        generation_tokens=float(s.generation_tokens),
        cached_prompt_tokens=float(s.prompt_tokens_cached),
    )
    rep.replica.metrics = m
    load = m.running + m.waiting
    rep.load_sum += load
    rep.load_max = max(rep.load_max, load)
    rep.kv_sum += m.kv_usage or 0.0
    rep.samples += 1
    return m
