"""Admission control: requests wait in fair per-tenant queues inside the gateway when the fleet is saturated.

Saturation is judged from real signals, per model: this gateway's admitted requests against the sum of each
healthy replica's allowance (a configured max in flight per replica, or the engine's slots x 2), minus replicas
whose engine reports its own queue past a bound (other gateways' traffic shows there). KV pressure above a
threshold sheds `batch` traffic first. A queued request has a deadline; past it the client gets 503 with
Retry-After. A full queue refuses new arrivals at once, lowest priority first. The last few slots of a model are
held back for tenants under their weighted share (see reserve.py), so a quiet tenant next to a noisy one starts
at once instead of waiting for a running request to end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetgate.config import AdmissionConfig
from fleetgate.domain.background import Periodic
from fleetgate.domain.errors import InvalidRequest, Overloaded, RateLimited
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.scheduling.fair_queue import PRIORITIES, FairQueue, Ticket
from fleetgate.scheduling.reserve import ReservePolicy, ShareReserve, TenantShares, may_take

BATCH = PRIORITIES.index("batch")


@dataclass(slots=True)
class Slot:
    """Permission for one request to go to the engines; release it exactly once."""

    model: str
    waited: float
    tenant: str = ""
    priority: int = PRIORITIES.index("standard")
    released: bool = False


@dataclass
class _ModelState:
    queue: FairQueue[asyncio.Future[Slot]]
    shares: TenantShares
    admitted: int = 0
    shed: dict[str, int] = field(default_factory=dict)


class AdmissionController:
    """One per gateway process; `acquire` before routing, `release` when the request ends."""

    def __init__(
        self,
        cfg: AdmissionConfig,
        registry: ReplicaRegistry,
        clock: Callable[[], float] = time.monotonic,
        reserve: ReservePolicy | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.clock = clock
        self.reserve = reserve or ShareReserve(cfg.reserve_slots, cfg.reserve_fraction)
        self._models: dict[str, _ModelState] = {}
        self._ticker = Periodic("fleetgate-admission", self._tick, cfg.tick_interval, wait_first=True)
        self.wait_observer: Callable[[str, float], None] | None = None  # (priority, seconds) for metrics

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState(FairQueue(self.cfg.quantum), TenantShares(self.cfg.active_window))
        return state

    def _may_take(self, state: _ModelState, tenant: str, priority: int, weight: int, capacity: int) -> bool:
        return may_take(
            self.reserve,
            state.shares,
            state.admitted,
            capacity,
            tenant,
            priority,
            weight,
            self.clock(),
            state.queue.waiting(),
        )

    def replica_allowance(self, replica: Replica) -> int:
        """How many requests this gateway may have on a replica at once."""
        metrics = replica.metrics
        fresh = metrics is not None and metrics.fresh(self.clock(), self.cfg.stale_after)
        if fresh and metrics is not None and metrics.waiting >= self.cfg.max_engine_waiting:
            return 0  # the engine's own queue is long: other gateways are filling it
        if self.cfg.max_in_flight_per_replica is not None:
            return self.cfg.max_in_flight_per_replica
        slots = metrics.total_slots if metrics is not None else None
        return slots * 2 if slots else self.cfg.default_in_flight_per_replica

    def capacity(self, model: str) -> int:
        """Requests of `model` this gateway may have in flight right now."""
        return sum(self.replica_allowance(r) for r in self.registry.serving(model) if r.healthy)

    def kv_pressure(self, model: str) -> float | None:
        """The lowest pressure among the model's replicas (the router can still pick that one)."""
        now = self.clock()
        values = [
            r.metrics.pressure
            for r in self.registry.serving(model)
            if r.healthy and r.metrics is not None and r.metrics.fresh(now, self.cfg.stale_after)
        ]
        known = [v for v in values if v is not None]
        return min(known) if known else None

    def context_limit(self, model: str) -> int | None:
        """The smallest context window among the model's replicas, as the engines report it."""
        limits = [r.context_len for r in self.registry.serving(model) if r.context_len]
        return min(limits) if limits else None

    def check_context(self, model: str, est_prompt: int, max_tokens: int | None) -> None:
        """400 before any engine sees a request that cannot fit the model's context."""
        limit = self.context_limit(model)
        need = est_prompt + (max_tokens or 0)
        if limit is not None and need > limit:
            raise InvalidRequest(
                f"the prompt (about {est_prompt} tokens) plus max_tokens ({max_tokens or 0}) exceeds the context"
                f" window of `{model}` ({limit} tokens): shorten the prompt or lower max_tokens",
                param="max_tokens" if max_tokens else "messages",
            )

    async def acquire(
        self, model: str, tenant: str, priority: int, cost: int, weight: int, timeout: float | None = None
    ) -> Slot:
        """Wait for room on the fleet, fairly; raise 503/429 with Retry-After when shed or out of time."""
        state = self._state(model)
        if priority == BATCH:
            pressure = self.kv_pressure(model)
            if pressure is not None and pressure >= self.cfg.shed_kv_threshold:
                state.shed["kv_pressure"] = state.shed.get("kv_pressure", 0) + 1
                raise Overloaded(
                    f"the fleet for `{model}` is under memory pressure; batch traffic is shed first",
                    retry_after=5,
                    reason="kv_pressure",
                )
        state.shares.arrived(tenant, priority, weight, self.clock())
        capacity = self.capacity(model)
        if len(state.queue) and state.admitted < capacity:
            self._dispatch(model, state, capacity)  # capacity can grow between releases and ticks
        ahead = state.queue.peek_priority()
        # Straight through when the rule lets it take a slot and nothing of a higher priority waits. Requests of
        # its own class still waiting here are ones the reserve holds back (tenants over their share).
        if (ahead is None or ahead >= priority) and self._may_take(state, tenant, priority, weight, capacity):
            self._observe(priority, 0.0)
            return self._grant(state, model, tenant, priority)
        return await self._wait(state, model, tenant, priority, cost, weight, timeout)

    async def _wait(
        self,
        state: _ModelState,
        model: str,
        tenant: str,
        priority: int,
        cost: int,
        weight: int,
        timeout: float | None,
    ) -> Slot:
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        enqueued = self.clock()
        ticket = Ticket(tenant, priority, max(cost, 1), weight, future, enqueued)
        if len(state.queue) >= self.cfg.max_queue:
            victim = state.queue.victim_for(ticket)
            if victim is None:
                state.shed["queue_full"] = state.shed.get("queue_full", 0) + 1
                raise RateLimited(
                    f"the queue for `{model}` is full ({self.cfg.max_queue} waiting); retry later",
                    retry_after=self._retry_after(state),
                    reason="queue_full",
                )
            state.queue.remove(victim)  # lower priority, or the tenant holding the most places, makes room
            state.shed["evicted"] = state.shed.get("evicted", 0) + 1
            victim.item.set_exception(
                Overloaded(
                    "pushed out of a full queue by higher-priority traffic or another tenant's fair share",
                    retry_after=self._retry_after(state),
                    reason="evicted",
                )
            )
        state.queue.push(ticket)
        limit = self.cfg.queue_timeout[PRIORITIES[priority]]
        limit = min(limit, timeout) if timeout is not None else limit
        try:
            async with asyncio.timeout(limit):
                slot = await asyncio.shield(future)
        except TimeoutError:
            if state.queue.remove(ticket) or not future.done() or future.exception() is not None:
                state.shed["deadline"] = state.shed.get("deadline", 0) + 1
                raise Overloaded(
                    f"waited {limit:.1f}s for room on the fleet for `{model}`; retry later",
                    retry_after=self._retry_after(state),
                    reason="deadline",
                ) from None
            slot = future.result()  # granted in the same instant the deadline fired: take it
        except asyncio.CancelledError:
            # The client left while queued: it leaves the queue at once and costs nothing.
            if not state.queue.remove(ticket) and future.done() and future.exception() is None:
                self.release(future.result())
            raise
        slot.waited = self.clock() - enqueued
        self._observe(priority, slot.waited)
        return slot

    def _observe(self, priority: int, waited: float) -> None:
        if self.wait_observer is not None:
            self.wait_observer(PRIORITIES[priority], waited)

    def _retry_after(self, state: _ModelState) -> float:
        # A rough drain estimate: one second per capacity's worth of queued requests, at least one.
        return max(1.0, min(60.0, len(state.queue) / max(state.admitted, 1)))

    def release(self, slot: Slot) -> None:
        """The request ended (any way): give its room to the next waiting request."""
        if slot.released:
            return
        slot.released = True
        state = self._state(slot.model)
        state.admitted -= 1
        state.shares.ended(slot.tenant, slot.priority, self.clock())
        self._dispatch(slot.model, state)

    def _grant(self, state: _ModelState, model: str, tenant: str, priority: int) -> Slot:
        state.admitted += 1
        state.shares.started(tenant, priority)
        return Slot(model, 0.0, tenant, priority)

    def _dispatch(self, model: str, state: _ModelState, capacity: int | None = None) -> None:
        room = self.capacity(model) if capacity is None else capacity

        def allow(ticket: Ticket[asyncio.Future[Slot]]) -> bool:
            return self._may_take(state, ticket.tenant, ticket.priority, ticket.weight, room)

        while len(state.queue) and state.admitted < room:
            ticket = state.queue.pop(allow)
            if ticket is None:
                break  # what waits is held back by the reserve
            if ticket.item.done():
                continue
            ticket.item.set_result(self._grant(state, model, ticket.tenant, ticket.priority))

    def start(self) -> None:
        """Re-check capacity periodically: replicas recover and engine queues drain without a release here."""
        self._ticker.start()

    async def stop(self) -> None:
        """Stop the ticker."""
        await self._ticker.stop()

    async def _tick(self) -> None:
        now = self.clock()
        for model, state in self._models.items():
            state.shares.expire(now, state.queue.waiting())  # so idle tenants are forgotten
            self._dispatch(model, state)

    def depths(self) -> dict[tuple[str, str, str], int]:
        """Queued requests per (model, tenant, priority)."""
        return {(m, t, p): n for m, s in self._models.items() for (t, p), n in s.queue.depths().items()}

    def shed_counts(self) -> dict[tuple[str, str], int]:
        """Requests refused per (model, reason) since start."""
        return {(m, reason): n for m, s in self._models.items() for reason, n in s.shed.items()}

    def admitted(self, model: str) -> int:
        """Requests of a model this gateway has let through and not yet released."""
        return self._state(model).admitted
