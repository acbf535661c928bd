"""A fair queue: strict priority classes, weighted deficit round robin over tenants, FIFO within a tenant.

The cost unit is tokens (estimated prompt + max_tokens), not requests, so a tenant sending long requests cannot
buy more than its weighted share. Deficit round robin (Shreedhar & Varghese) bounds each backlogged tenant's
service within one quantum plus one maximum request of its weighted share over any busy period, in O(1) per
decision when the quantum is at least the typical request cost.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

PRIORITIES = ("interactive", "standard", "batch")  # served strictly in this order

T = TypeVar("T")


@dataclass(eq=False)
class Ticket(Generic[T]):
    """One waiting request; `item` is whatever the caller needs back when it is served."""

    tenant: str
    priority: int  # index into PRIORITIES
    cost: int  # tokens
    weight: int
    item: T
    enqueued_at: float = 0.0


@dataclass
class _Class(Generic[T]):
    queues: OrderedDict[str, deque[Ticket[T]]] = field(default_factory=OrderedDict)  # active tenants, in turn order
    deficit: dict[str, float] = field(default_factory=dict)
    visited: bool = False  # the tenant at the head of the order already got its quantum this turn
    size: int = 0


class FairQueue(Generic[T]):
    """Waiting requests of one model; `pop` returns the next one to serve."""

    def __init__(self, quantum: int = 4096) -> None:
        self.quantum = quantum
        self._classes: list[_Class[T]] = [_Class() for _ in PRIORITIES]

    def __len__(self) -> int:
        return sum(c.size for c in self._classes)

    def push(self, ticket: Ticket[T]) -> None:
        """Queue a request at the end of its tenant's line."""
        cls = self._classes[ticket.priority]
        line = cls.queues.get(ticket.tenant)
        if line is None:
            line = cls.queues[ticket.tenant] = deque()
            cls.deficit[ticket.tenant] = 0.0
        line.append(ticket)
        cls.size += 1

    def pop(self, allow: Callable[[Ticket[T]], bool] | None = None) -> Ticket[T] | None:
        """The next request to serve: highest priority class first, DRR across its tenants.

        With `allow`, tenants whose head request it refuses are passed over (their turn ends, their deficit
        carries); when it refuses every tenant of the highest waiting class, nothing is served: a lower class
        never gets what a higher one was refused, so priorities stay strict.
        """
        for cls in self._classes:
            if cls.size == 0:
                continue
            if allow is not None and not any(allow(line[0]) for line in cls.queues.values()):
                return None
            self._skip_idle_rounds(cls, allow)
            while True:
                tenant, line = next(iter(cls.queues.items()))
                head = line[0]
                if allow is not None and not allow(head):
                    cls.queues.move_to_end(tenant)
                    cls.visited = False
                    continue
                if not cls.visited:
                    cls.deficit[tenant] += self.quantum * head.weight
                    cls.visited = True
                if head.cost <= cls.deficit[tenant]:
                    line.popleft()
                    cls.size -= 1
                    cls.deficit[tenant] -= head.cost
                    if not line:
                        self._retire(cls, tenant)
                    return head
                cls.queues.move_to_end(tenant)  # its turn is over; the deficit carries to the next turn
                cls.visited = False
        return None

    def _skip_idle_rounds(self, cls: _Class[T], allow: Callable[[Ticket[T]], bool] | None) -> None:
        """Give every eligible tenant, at once, the quanta of the rounds in which nobody could be served.

        Without this, `pop` turns round after round adding one quantum per tenant until some head request fits:
        a cost of 1e9 tokens against a quantum of 64 was 15 million turns (6 s of a blocked event loop). A full
        round gives each eligible tenant one quantum and leaves the turn order as it was, so adding k rounds at
        once is the same state the loop would reach; the loop then serves within one more round. O(tenants)."""
        rounds: int | None = None
        for position, (tenant, line) in enumerate(cls.queues.items()):
            head = line[0]
            if allow is not None and not allow(head):
                continue
            missing = head.cost - cls.deficit[tenant]
            if position == 0 and cls.visited and missing <= 0:
                return  # the head tenant is mid-turn and its request already fits
            # Quanta still to be added before this head fits; a tenant not yet visited gets one on its visit.
            needed = max(math.ceil(missing / (self.quantum * head.weight)), 0 if position == 0 and cls.visited else 1)
            rounds = needed if rounds is None else min(rounds, needed)
        if rounds is None or rounds < 2:
            return
        for tenant, line in cls.queues.items():
            if allow is None or allow(line[0]):
                cls.deficit[tenant] += (rounds - 1) * self.quantum * line[0].weight

    def peek_priority(self) -> int | None:
        """The priority class that `pop` would serve, or None when empty."""
        for index, cls in enumerate(self._classes):
            if cls.size:
                return index
        return None

    def remove(self, ticket: Ticket[T]) -> bool:
        """Take a request out (its client left, or its deadline passed); False if it was not queued."""
        cls = self._classes[ticket.priority]
        line = cls.queues.get(ticket.tenant)
        if line is None:
            return False
        try:
            line.remove(ticket)
        except ValueError:
            return False
        cls.size -= 1
        if not line:
            self._retire(cls, ticket.tenant)
        return True

    def victim_for(self, arrival: Ticket[T]) -> Ticket[T] | None:
        """Whom to push out when the queue is full and `arrival` wants in; None means refuse the arrival.

        Lowest priority first; within a class, the newest request of the tenant holding the most places, and
        only when that tenant holds more than the arriving tenant would: a flood can fill a queue, but it cannot
        keep a quiet tenant out of it.
        """
        for index in range(len(self._classes) - 1, -1, -1):
            cls = self._classes[index]
            if not cls.size:
                continue
            if index < arrival.priority:
                return None  # everything queued matters more than the arrival
            hog, line = max(cls.queues.items(), key=lambda item: len(item[1]))
            if index > arrival.priority:
                return line[-1]
            mine = len(cls.queues.get(arrival.tenant, ()))
            return line[-1] if hog != arrival.tenant and len(line) > mine + 1 else None
        return None

    def waiting(self) -> Iterator[tuple[str, int]]:
        """(tenant, priority index) of every tenant with a request waiting."""
        for index, cls in enumerate(self._classes):
            for tenant in cls.queues:
                yield tenant, index

    def depths(self) -> dict[tuple[str, str], int]:
        """Queued requests per (tenant, priority name), for metrics."""
        return {
            (tenant, PRIORITIES[index]): len(line)
            for index, cls in enumerate(self._classes)
            for tenant, line in cls.queues.items()
        }

    def _retire(self, cls: _Class[T], tenant: str) -> None:
        # A tenant that stops being backlogged loses its deficit: credit cannot be saved up while idle.
        head_tenant = next(iter(cls.queues))
        del cls.queues[tenant]
        del cls.deficit[tenant]
        if tenant == head_tenant:
            cls.visited = False
