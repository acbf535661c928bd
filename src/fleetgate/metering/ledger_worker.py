"""The SQLite ledger's inserts in a worker process, for busy flusher passes.

Why: at a few thousand requests per second, parsing the outbox's finish lines, building UsageEvents and inserting
them cost the gateway's process ~20% of its CPU (measured: the gateway's rate rose ~16% with the flusher held
off), and that process is the gateway's bottleneck: one event loop, one core. A pass carrying at least
`min_bytes` of new lines hands the range (segment path, start, end offsets) to one worker process, which reads,
parses and inserts it with the same code the gateway would run (`ledger.insert_sqlite`). Small passes stay in
the gateway: no process is started for light traffic, and the answer comes without a round trip.

A finish record that is not a valid UsageEvent (a poison record) is not inserted: the worker returns it, and the
flusher quarantines it (dead_letter.py), so one bad line cannot block the ledger.

Delivery stays at least once: the flusher moves its checkpoint only after the worker answered, and the insert is
keyed by event_id. A worker that dies (killed, out of memory) fails that pass; the next pass starts a new one.
The worker dies with the gateway (PR_SET_PDEATHSIG), so a SIGKILLed gateway leaves no orphan.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from fleetgate.db.engine import make_sync_engine
from fleetgate.domain.parent_death import die_with_parent
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.ledger import insert_sqlite_sync
from fleetgate.metering.records import finished_events, usage_event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What the worker did with a range: valid events handed to the ledger, and the poison records it skipped."""

    inserted: int
    poison: list[Any]


class LedgerWorker:
    """One worker process that inserts ranges of outbox segments into a SQLite ledger file."""

    def __init__(self, sqlite_file: str, batch_size: int, min_bytes: int) -> None:
        self.sqlite_file = sqlite_file
        self.batch_size = batch_size
        self.min_bytes = min_bytes
        self._pool: ProcessPoolExecutor | None = None
        self.started = 0  # worker processes started (restarts are visible)

    def takes(self, new_bytes: int) -> bool:
        """Whether a pass with this many new bytes goes to the worker."""
        return new_bytes >= self.min_bytes

    async def insert_range(self, segment: Path, start: int, end: int) -> RangeResult:
        """Insert the valid finish records in bytes [start, end) of a segment; the others come back as poison."""
        if self._pool is None:
            # spawn, not fork: the gateway runs threads and an event loop, which a forked child must not inherit.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_open_worker,
                initargs=(self.sqlite_file,),
            )
            self.started += 1
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, _insert_range, str(segment), start, end, self.batch_size
            )
        except BrokenProcessPool:
            log.warning("the ledger worker process died; the next flusher pass starts a new one")
            pool.shutdown(wait=False)
            if self._pool is pool:
                self._pool = None
            raise

    def close(self) -> None:
        """Stop the worker process (waits for a pass in progress)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# -- in the worker process
_engine: Engine | None = None


def _open_worker(sqlite_file: str) -> None:
    global _engine
    die_with_parent()
    _engine = make_sync_engine(sqlite_file)


def _insert_range(segment: str, start: int, end: int, batch_size: int) -> RangeResult:
    assert _engine is not None, "the worker's initializer did not run"
    with open(segment, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    events: list[UsageEvent] = []
    poison: list[Any] = []
    for _, raw in finished_events(data):
        event = usage_event(raw)
        if event is None:
            poison.append(raw)
        else:
            events.append(event)
    insert_sqlite_sync(_engine, events, batch_size)
    return RangeResult(len(events), poison)
