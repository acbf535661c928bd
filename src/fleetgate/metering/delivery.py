"""Handing parsed outbox records to one consumer (the ledger or a sink), and telling poison from outage.

A batch the ledger refuses is either an outage (connection lost, database locked: retry the whole batch later)
or carries a poison record (a value the database rejects as data): then the batch is split in halves until the
records it refuses are isolated, so they can be quarantined and every other record still lands.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from fleetgate.metering.events import UsageEvent
from fleetgate.metering.records import finished_events, usage_event

log = logging.getLogger(__name__)
LEDGER = "ledger"
Deliver = Callable[[list[UsageEvent]], Awaitable[object]]


@dataclass
class Consumer:
    """The ledger or one sink, with its retry state."""

    name: str
    deliver: Deliver
    failing_since: float | None = None
    retry_at: float = 0.0
    delivered: int = 0
    failures: int = 0

    def failed(self, exc: Exception, now: float) -> None:
        """Note a failed delivery and back off."""
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
            log.warning("%s unavailable (%s: %s); events stay in the outbox", self.name, type(exc).__name__, exc)
        self.retry_at = now + min(0.5 * 2 ** min(self.failures, 4), 5.0)

    def succeeded(self, delivered: int, now: float) -> None:
        """Note a delivery."""
        if self.failing_since is not None:
            log.warning("%s is back after %.1fs; catching up", self.name, now - self.failing_since)
        self.failing_since, self.failures = None, 0
        self.delivered += delivered


class Records:
    """The finish records of a byte range of a segment, parsed and validated once, on first use."""

    def __init__(self, data: bytes, base: int) -> None:
        self.data = data
        self.base = base
        self._parsed: list[tuple[int, UsageEvent | None, Any]] | None = None

    def after(self, offset: int) -> list[tuple[int, UsageEvent | None, Any]]:
        """(end offset, event or None if poison, raw record) of the records that end past `offset`."""
        if self._parsed is None:
            self._parsed = [(at, usage_event(raw), raw) for at, raw in finished_events(self.data, self.base)]
        return [r for r in self._parsed if r[0] > offset]

    def events_after(self, offset: int) -> list[UsageEvent]:
        """The valid events that end past `offset` (poison records are the ledger's to quarantine)."""
        return [event for _, event, _ in self.after(offset) if event is not None]


async def deliver_sink(consumer: Consumer, events: list[UsageEvent], batch_size: int) -> int:
    """Publish events in batches; raises on failure (the flusher retries the range)."""
    for i in range(0, len(events), batch_size):
        await consumer.deliver(events[i : i + batch_size])
    return len(events)


async def insert_isolating(
    consumer: Consumer, events: list[UsageEvent], batch_size: int
) -> list[tuple[UsageEvent, Exception]]:
    """Insert events in batches; returns the ones the ledger refuses as data (poison). Raises on an outage."""
    refused: list[tuple[UsageEvent, Exception]] = []
    for i in range(0, len(events), batch_size):
        refused += await _insert_or_split(consumer, events[i : i + batch_size])
    return refused


async def _insert_or_split(consumer: Consumer, events: list[UsageEvent]) -> list[tuple[UsageEvent, Exception]]:
    try:
        await consumer.deliver(events)
        return []
    except Exception as exc:
        if not is_poison_error(exc):
            raise
        if len(events) == 1:
            return [(events[0], exc)]
    mid = len(events) // 2
    return [*await _insert_or_split(consumer, events[:mid]), *await _insert_or_split(consumer, events[mid:])]


def is_poison_error(exc: BaseException) -> bool:
    """Whether an insert failed because of the data (retrying cannot help) rather than the database's state."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        # SQLSTATE class 22 (data exception) or 23 (integrity constraint); everything else may pass.
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return str(code or "")[:2] in {"22", "23"}
    if isinstance(exc, StatementError):
        return exc.orig is not None and is_poison_error(exc.orig)
    return isinstance(exc, TypeError | ValueError | OverflowError)
