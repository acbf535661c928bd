"""The gateway's admission on simulated time: the same FairQueue, capacity rule and reserve (`may_take`) as
scheduling/admission.py, run synchronously by the fleet simulator's event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fleetgate.scheduling.admission import BATCH, AdmissionController
from fleetgate.scheduling.fair_queue import PRIORITIES, FairQueue, Ticket
from fleetgate.scheduling.reserve import TenantShares, may_take

T = TypeVar("T")


class SimAdmission(Generic[T]):
    """Admits, queues or sheds each arrival as the gateway's controller would; `T` is what the simulator queues.

    The simulator hands it three callbacks: `admit(item)` routes an admitted request, `shed(item, reason)` ends
    one unserved, `at(when, ticket)` schedules a queued request's deadline (which calls `deadline(ticket)`).
    """

    def __init__(
        self,
        controller: AdmissionController,
        model: str,
        admit: Callable[[T], None],
        shed: Callable[[T, str], None],
        at: Callable[[float, Ticket[T]], None],
    ) -> None:
        self.controller = controller
        self.cfg = controller.cfg
        self.model = model
        self.queue: FairQueue[T] = FairQueue(self.cfg.quantum)
        # The gateway's reserve for tenants under their share (see scheduling/reserve.py), on simulated time.
        self.shares = TenantShares(self.cfg.active_window)
        self.admitted = 0
        self.capacity = 0
        self._admit, self._shed, self._at = admit, shed, at

    def arrive(self, item: T, tenant: str, priority: int, cost: int, now: float) -> None:
        """One arrival: shed it (batch under KV pressure, a full queue), admit it now, or queue it."""
        cfg = self.cfg
        if priority == BATCH:
            pressure = self.controller.kv_pressure(self.model)
            if pressure is not None and pressure >= cfg.shed_kv_threshold:
                self._shed(item, "kv_pressure")
                return
        self.shares.arrived(tenant, priority, 1, now)
        ahead = self.queue.peek_priority()
        if (ahead is None or ahead >= priority) and self._may_take(tenant, priority, 1, now):
            self._start(item, tenant, priority)
            return
        ticket = Ticket(tenant, priority, max(cost, 1), 1, item)
        ticket.enqueued_at = now
        if len(self.queue) >= cfg.max_queue:
            victim = self.queue.victim_for(ticket)
            if victim is None:
                self._shed(item, "queue_full")
                return
            self.queue.remove(victim)
            self._shed(victim.item, "evicted")
        self.queue.push(ticket)
        self._at(now + cfg.queue_timeout[PRIORITIES[priority]], ticket)

    def deadline(self, ticket: Ticket[T]) -> None:
        """A queued request's deadline passed: shed it if it still waits."""
        if self.queue.remove(ticket):
            self._shed(ticket.item, "deadline")

    def ended(self, tenant: str, priority: int, now: float) -> None:
        """An admitted request finished: its slot goes to the next that may take it."""
        self.admitted -= 1
        self.shares.ended(tenant, priority, now)
        self.dispatch(now)

    def refresh(self, now: float) -> None:
        """Re-read capacity (the engines' queues and scrape freshness moved), then admit what now fits."""
        self.capacity = self.controller.capacity(self.model)
        self.dispatch(now)

    def dispatch(self, now: float) -> None:
        """Admit queued requests while there is room and the reserve lets them."""

        def allow(ticket: Ticket[T]) -> bool:
            return self._may_take(ticket.tenant, ticket.priority, ticket.weight, now)

        while len(self.queue) and self.admitted < self.capacity:
            ticket = self.queue.pop(allow)
            if ticket is None:
                break  # what waits is held back by the reserve (tenants over their share)
            self._start(ticket.item, ticket.tenant, ticket.priority)

    def waiting(self) -> int:
        """Requests in the queue."""
        return len(self.queue)

    def _start(self, item: T, tenant: str, priority: int) -> None:
        self.admitted += 1
        self.shares.started(tenant, priority)
        self._admit(item)

    def _may_take(self, tenant: str, priority: int, weight: int, now: float) -> bool:
        return may_take(
            self.controller.reserve,
            self.shares,
            self.admitted,
            self.capacity,
            tenant,
            priority,
            weight,
            now,
            self.queue.waiting(),
        )
