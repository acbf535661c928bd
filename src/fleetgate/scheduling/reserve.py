"""Capacity held back for tenants under their weighted share, so a quiet tenant's request starts at once.

Why: a fair queue only orders the requests that wait. Once a noisy tenant keeps every slot of a model busy, a
quiet tenant's request is first in line but still waits for one of the running requests to end (engines do not
preempt), which at saturation is a large multiple of its TTFT on an idle fleet. So the last few slots of a model
(the reserve) go only to tenants holding less than their weighted share of the model's capacity, counted among
the tenants active recently at the same or a higher priority: a tenant at or over its share may not take them
while others have demand. A tenant alone has the whole capacity as its share (work-conserving), a request of
a higher priority class is never held back for a lower one, and the cost is at most the reserve left idle while
a recently active tenant sends nothing: `active_window` bounds that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from fleetgate.scheduling.fair_queue import PRIORITIES

_NONE = len(PRIORITIES)  # "active at no priority"


class ReservePolicy(Protocol):
    """How many of a model's slots only tenants under their weighted share may take."""

    def reserved(self, capacity: int) -> int:
        """Slots of `capacity` held back for tenants under their share (0 = none)."""
        ...


@dataclass(frozen=True, slots=True)
class ShareReserve:
    """`slots` slots, or `fraction` of the capacity if that is more; always leaves one slot open to anyone."""

    slots: int = 1
    fraction: float = 0.05

    def reserved(self, capacity: int) -> int:
        """Held-back slots for a model with `capacity` slots."""
        wanted = max(self.slots, math.ceil(capacity * self.fraction))
        return max(0, min(wanted, capacity - 1))


@dataclass(slots=True)
class _Use:
    weight: int
    in_flight: int = 0
    running: list[int] = field(default_factory=lambda: [0] * len(PRIORITIES))
    seen: list[float] = field(default_factory=lambda: [-math.inf] * len(PRIORITIES))  # last arrival or end
    counted_from: int = _NONE  # the totals hold this tenant's weight from this priority index down


class TenantShares:
    """Per model: what each recently active tenant holds, and the total weight of active tenants per priority.

    A tenant is active at a priority while it has a request running or queued there, and for `window` seconds
    after one arrived or ended. `weight_at(p)` is the weight of tenants active at priority p or a higher one
    (a lower index): the tenants a request of priority p shares the model with. Becoming active is added at
    once; expiry is applied by `refresh` (at most every `refresh_every` seconds), which also forgets idle
    tenants, so memory follows the tenants of the last window.
    """

    def __init__(self, window: float, refresh_every: float = 0.25) -> None:
        self.window = window
        self.refresh_every = refresh_every
        self._uses: dict[str, _Use] = {}
        self._totals = [0.0] * len(PRIORITIES)
        self._refreshed = -math.inf

    def __len__(self) -> int:
        return len(self._uses)

    def holding(self, tenant: str) -> int:
        """Requests of `tenant` running now."""
        use = self._uses.get(tenant)
        return use.in_flight if use is not None else 0

    def arrived(self, tenant: str, priority: int, weight: int, now: float) -> None:
        """A request of `tenant` arrived: the tenant is active at `priority` (its weight counts at once)."""
        use = self._uses.get(tenant)
        if use is None:
            use = self._uses[tenant] = _Use(weight)
        elif use.weight != weight:  # the admin changed it: correct the totals it is counted in
            self._add(weight - use.weight, use.counted_from, _NONE)
            use.weight = weight
        use.seen[priority] = now
        if priority < use.counted_from:
            self._add(use.weight, priority, use.counted_from)
            use.counted_from = priority

    def started(self, tenant: str, priority: int) -> None:
        """A request of `tenant` was admitted (after `arrived`)."""
        use = self._uses.get(tenant)
        if use is None:  # forgotten in between (not possible while it waited in the queue); count it anyway
            use = self._uses[tenant] = _Use(1)
        use.in_flight += 1
        use.running[priority] += 1

    def ended(self, tenant: str, priority: int, now: float) -> None:
        """A request of `tenant` ended: it stays active for the window."""
        use = self._uses.get(tenant)
        if use is None:
            return
        use.in_flight -= 1
        use.running[priority] -= 1
        use.seen[priority] = now

    def weight_at(self, priority: int, now: float, queued: Iterable[tuple[str, int]]) -> float:
        """The weight of tenants active at `priority` or higher; `queued` lists (tenant, priority) waiting."""
        self.expire(now, queued)
        return self._totals[priority]

    def expire(self, now: float, queued: Iterable[tuple[str, int]]) -> None:
        """`refresh` if the last one is `refresh_every` seconds old."""
        if now - self._refreshed >= self.refresh_every:
            self.refresh(now, queued)

    def refresh(self, now: float, queued: Iterable[tuple[str, int]]) -> None:
        """Recount the totals with expiry applied, and forget tenants idle for the whole window."""
        for tenant, priority in queued:  # waiting is demand, however long ago it arrived
            use = self._uses.get(tenant)
            if use is not None:
                use.seen[priority] = now
        totals = [0.0] * len(PRIORITIES)
        horizon = now - self.window
        for tenant, use in list(self._uses.items()):
            best = next(
                (p for p in range(len(PRIORITIES)) if use.running[p] > 0 or use.seen[p] > horizon),
                _NONE,
            )
            use.counted_from = best
            if best == _NONE:
                del self._uses[tenant]  # nothing running (running implies active) and quiet for the window
                continue
            for p in range(best, len(PRIORITIES)):
                totals[p] += use.weight
        self._totals = totals
        self._refreshed = now

    def _add(self, weight: float, first: int, stop: int) -> None:
        for p in range(first, stop):
            self._totals[p] += weight


def may_take(
    reserve: ReservePolicy,
    shares: TenantShares,
    admitted: int,
    capacity: int,
    tenant: str,
    priority: int,
    weight: int,
    now: float,
    queued: Iterable[tuple[str, int]],
) -> bool:
    """The admission rule (the gateway's controller and the offline simulator both use this one)."""
    if admitted >= capacity:
        return False
    if admitted < capacity - reserve.reserved(capacity):
        return True
    # Inside the reserve: only a tenant holding less than its weighted share of the capacity, among the tenants
    # active at this priority or a higher one (a tenant alone there has all of it).
    return shares.holding(tenant) * shares.weight_at(priority, now, queued) < capacity * weight
