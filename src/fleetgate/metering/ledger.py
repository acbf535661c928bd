"""The SQL ledger: idempotent inserts of UsageEvents keyed by event_id, with daily roll-ups kept in step.

Events are immutable: there is no update or delete. A batch is one transaction that inserts the events with
`ON CONFLICT DO NOTHING RETURNING event_id` and adds only the rows that were really new to `usage_daily`, so a
replayed or overlapping batch never double counts, and reports read roll-ups instead of raw events.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fleetgate.db.engine import make_engine, migrate
from fleetgate.db.schema import usage_daily, usage_events
from fleetgate.domain.errors import InvalidRequest
from fleetgate.metering.events import UsageEvent

log = logging.getLogger(__name__)

# Rows per INSERT: 19 bound parameters each stays far below SQLite's and asyncpg's 32,767-parameter limits.
MAX_BATCH = 1000
# Rows per INSERT ... RETURNING are powers of two up to this: at most 10 distinct statement texts (see _insert_in).
MAX_CHUNK = 512
MAX_PAGE = 1000
_RETRIES = 3
_COUNTS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "busy_seconds")
STATUS_COLUMNS: dict[str, str] = {
    "ok": "ok",
    "client_abort": "aborts",
    "engine_error": "errors",
    "timeout": "timeouts",
    "rejected": "rejected",
    "gateway_lost": "lost",
    "gateway_error": "errors",
}
_SUMMED = (*_COUNTS, *dict.fromkeys(STATUS_COLUMNS.values()))  # "errors" takes two statuses
_EVENT_FIELDS = tuple(f.name for f in fields(UsageEvent))
_event_values = operator.attrgetter(*_EVENT_FIELDS)
# SQLite's fast path (see insert_sqlite): plain DB-API statements, one text each whatever the batch size.
# Built from our own field names, never from input, so S608 does not apply.
_COLUMNS, _PLACEHOLDERS = ", ".join(_EVENT_FIELDS), ", ".join("?" * len(_EVENT_FIELDS))
_SQLITE_INSERT = (
    f"INSERT INTO usage_events ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
    " ON CONFLICT (event_id) DO NOTHING"
)
_SQLITE_PRESENT = "SELECT event_id FROM usage_events WHERE event_id IN (SELECT value FROM json_each(?))"


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One roll-up row: what a tenant used of a model (and adapter) on one GPU type in one UTC day."""

    day: date
    tenant_id: str
    model: str
    adapter: str | None
    gpu_type: str | None
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    busy_seconds: float
    ok: int
    aborts: int
    errors: int
    timeouts: int
    rejected: int
    lost: int

    @property
    def fresh_tokens(self) -> int:
        """Prompt tokens not served from the prefix cache."""
        return max(self.prompt_tokens - self.cached_tokens, 0)

    @property
    def key(self) -> str:
        """A stable text key for this roll-up (what a Charge names instead of an event id)."""
        return f"{self.day.isoformat()}|{self.tenant_id}|{self.model}|{self.adapter or ''}|{self.gpu_type or ''}"


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of raw events, oldest first; pass `next_cursor` as `after` to read on (None = no more)."""

    events: list[UsageEvent]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class TokenTotals:
    """Token sums over a set of events (what reconcile compares with an engine's counters)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def fresh_tokens(self) -> int:
        """Prompt tokens the engine had to compute."""
        return max(self.prompt_tokens - self.cached_tokens, 0)


def utc_day(ts: float) -> date:
    """The UTC calendar day of a Unix time."""
    return datetime.fromtimestamp(ts, UTC).date()


@functools.cache
def _statements(dialect_name: str) -> tuple[Any, Any]:
    """The idempotent event insert and the roll-up upsert for one dialect, built once."""
    dialect: Any = postgresql if dialect_name == "postgresql" else sqlite
    insert_events = (
        dialect.insert(usage_events)
        .on_conflict_do_nothing(index_elements=[usage_events.c.event_id])
        .returning(usage_events.c.event_id)
    )
    up = dialect.insert(usage_daily)
    upsert_daily = up.on_conflict_do_update(
        index_elements=[usage_daily.c[k] for k in ("day", "tenant_id", "model", "adapter", "gpu_type")],
        set_={name: usage_daily.c[name] + up.excluded[name] for name in _SUMMED},
    )
    return insert_events, upsert_daily


def chunk_sizes(n: int) -> list[int]:
    """`n` split into powers of two, largest first (at most MAX_CHUNK): the row counts of the INSERTs for `n`."""
    rest = n % MAX_CHUNK
    return [MAX_CHUNK] * (n // MAX_CHUNK) + [1 << b for b in range(rest.bit_length() - 1, -1, -1) if rest >> b & 1]


def _row(event: UsageEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in _EVENT_FIELDS}


def _rollups(events: Iterable[UsageEvent]) -> list[dict[str, Any]]:
    groups: dict[tuple[date, str, str, str, str], dict[str, Any]] = {}
    days: dict[int, date] = {}  # a batch spans a day or two: one datetime per day, not per event
    for e in events:
        day_number = int(e.started_at // 86400)
        day = days.get(day_number)
        if day is None:
            day = days[day_number] = utc_day(e.started_at)
        key = (day, e.tenant_id, e.model, e.adapter or "", e.gpu_type or "")
        acc = groups.get(key)
        if acc is None:
            acc = dict.fromkeys(_SUMMED, 0)
            acc["busy_seconds"] = 0.0
            groups[key] = acc
        acc["requests"] += 1
        if e.billable:  # roll-ups are what invoices rate: the gateway's own failures are never in them
            acc["prompt_tokens"] += e.prompt_tokens
            acc["cached_tokens"] += e.cached_tokens
            acc["completion_tokens"] += e.completion_tokens
        acc["busy_seconds"] += e.busy_seconds  # the GPU was busy either way: operator cost
        acc[STATUS_COLUMNS.get(e.status, "errors")] += 1  # a status newer than this code still gets counted
    # Sorted keys: concurrent writers take row locks in the same order, so they cannot deadlock.
    return [
        {"day": k[0], "tenant_id": k[1], "model": k[2], "adapter": k[3], "gpu_type": k[4], **groups[k]}
        for k in sorted(groups)
    ]


def unique_by_id(events: Iterable[UsageEvent]) -> list[UsageEvent]:
    """One event per event_id, sorted by it: concurrent batches then lock index entries in the same order (no
    deadlock on PostgreSQL)."""
    unique: dict[str, UsageEvent] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    return [unique[k] for k in sorted(unique)]


def insert_sqlite(conn: Connection, batch: Sequence[UsageEvent]) -> int:
    """SQLite's insert of one batch: the ids already present, then one executemany of the rest, under the write
    lock; returns how many rows were new. Sync, so the gateway (through `run_sync`) and the ledger worker process
    (metering/ledger_worker.py) run the same code.

    Why not the RETURNING insert: SQLAlchemy binds every row's 19 parameters in Python, ~26 us of CPU per event,
    most of the gateway's metering cost; this costs ~15 (measured side by side). BEGIN IMMEDIATE takes the
    database's write lock before the lookup, so no other writer can add one of these ids between the lookup and
    the insert: the roll-ups count exactly the rows this transaction added.
    """
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    ids = orjson.dumps([e.event_id for e in batch]).decode()
    present = {row[0] for row in conn.exec_driver_sql(_SQLITE_PRESENT, (ids,)).all()}
    new = [e for e in batch if e.event_id not in present]
    if not new:
        return 0
    conn.exec_driver_sql(_SQLITE_INSERT, [_event_values(e) for e in new])
    conn.execute(_statements("sqlite")[1], _rollups(new))
    return len(new)


def insert_sqlite_sync(engine: Engine, events: Iterable[UsageEvent], batch_size: int) -> int:
    """SqlLedger.insert for a plain (sync) SQLite engine: batches, each its own transaction, retried when locked."""
    ordered = unique_by_id(events)
    new = 0
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start : start + batch_size]
        for attempt in range(_RETRIES):
            try:
                with engine.begin() as conn:
                    new += insert_sqlite(conn, batch)
                break
            except DBAPIError as exc:
                if attempt + 1 == _RETRIES or not _retryable(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
    return new


def _retryable(exc: DBAPIError) -> bool:
    # PostgreSQL deadlock / serialization failure, or SQLite still locked after busy_timeout: safe to retry,
    # since the whole batch is idempotent.
    code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
    return code in {"40P01", "40001"} or "database is locked" in str(exc.orig)


def _cursor(event: UsageEvent) -> str:
    return f"{event.started_at!r}/{event.event_id}"


def _parse_cursor(cursor: str) -> tuple[float, str]:
    ts, sep, event_id = cursor.partition("/")
    try:
        if not sep or not event_id:
            raise ValueError(cursor)
        return float(ts), event_id
    except ValueError:
        raise InvalidRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page") from None


class SqlLedger:
    """The Ledger on SQLite or PostgreSQL (SQLAlchemy Core); safe to share between gateway processes."""

    def __init__(self, engine: AsyncEngine, batch_size: int = 500) -> None:
        self.engine = engine
        self.batch_size = max(1, min(batch_size, MAX_BATCH))

    @classmethod
    async def open(cls, url: str, *, batch_size: int = 500, run_migrations: bool = True) -> SqlLedger:
        """Connect (and migrate to the newest schema)."""
        engine = make_engine(url)
        if run_migrations:
            await migrate(engine)
        return cls(engine, batch_size)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.engine.dispose()

    async def insert(self, events: list[UsageEvent]) -> int:
        """Insert events keyed by event_id; already-present ids are skipped. Returns how many were new."""
        ordered = unique_by_id(events)
        new = 0
        for start in range(0, len(ordered), self.batch_size):
            new += await self._insert_batch(ordered[start : start + self.batch_size])
        return new

    async def _insert_batch(self, batch: Sequence[UsageEvent]) -> int:
        for attempt in range(_RETRIES):
            try:
                async with self.engine.begin() as conn:
                    return await self._insert_in(conn, batch)
            except DBAPIError as exc:
                if attempt + 1 == _RETRIES or not _retryable(exc):
                    raise
                log.warning("ledger insert retried after %s", type(exc.orig).__name__)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _insert_in(self, conn: AsyncConnection, batch: Sequence[UsageEvent]) -> int:
        if conn.dialect.name == "sqlite":
            return await conn.run_sync(insert_sqlite, batch)
        insert_events, upsert_daily = _statements(conn.dialect.name)
        # One fixed statement executed with many parameter sets: SQLAlchemy compiles it once and caches it
        # (a multi-VALUES statement built per batch was recompiled every time: ~60 ms of loop time per 250 rows).
        # With RETURNING, SQLAlchemy still sends it as one multi-VALUES INSERT per execute, whose text depends on
        # the row count, and every distinct text is a prepared statement the driver keeps per connection (sqlite3
        # caches 128, asyncpg 100, each holding a plan for up to 512 x 19 parameters): one per batch size made
        # the gateway's memory grow for as long as new batch sizes came. Power-of-two chunks bound the texts.
        inserted: set[str] = set()
        start = 0
        for size in chunk_sizes(len(batch)):
            result = await conn.execute(insert_events, [_row(e) for e in batch[start : start + size]])
            inserted.update(result.scalars().all())
            start += size
        if not inserted:
            return 0
        await conn.execute(upsert_daily, _rollups(e for e in batch if e.event_id in inserted))
        return len(inserted)

    async def get(self, event_id: str) -> UsageEvent | None:
        """One event by id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(usage_events).where(usage_events.c.event_id == event_id))).first()
        return None if row is None else UsageEvent.from_dict(dict(row._mapping))

    async def events(
        self,
        *,
        tenant_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> EventPage:
        """Raw events started in [since, until), oldest first, at most `limit` (<= 1000) per page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
        c = usage_events.c
        query = select(usage_events).order_by(c.started_at, c.event_id).limit(limit + 1)
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        if since is not None:
            query = query.where(c.started_at >= since)
        if until is not None:
            query = query.where(c.started_at < until)
        if after is not None:
            ts, event_id = _parse_cursor(after)
            query = query.where(or_(c.started_at > ts, and_(c.started_at == ts, c.event_id > event_id)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [UsageEvent.from_dict(dict(r._mapping)) for r in rows[:limit]]
        return EventPage(found, _cursor(found[-1]) if len(rows) > limit else None)

    async def daily(
        self, *, since: date | None = None, until: date | None = None, tenant_id: str | None = None
    ) -> list[DailyUsage]:
        """Roll-up rows for days in [since, until] (both inclusive), by day, tenant, model, adapter, GPU type."""
        c = usage_daily.c
        query = select(usage_daily).order_by(c.day, c.tenant_id, c.model, c.adapter, c.gpu_type)
        if since is not None:
            query = query.where(c.day >= since)
        if until is not None:
            query = query.where(c.day <= until)
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            data = dict(r._mapping)
            data["adapter"] = data["adapter"] or None
            data["gpu_type"] = data["gpu_type"] or None
            data["busy_seconds"] = float(data["busy_seconds"])
            out.append(DailyUsage(**data))
        return out

    async def replica_totals(
        self, since: float, until: float | None = None, replica_ids: Sequence[str] | None = None
    ) -> dict[str, TokenTotals]:
        """Token sums per replica for events started in [since, until) (uses the replica/time index)."""
        c = usage_events.c
        query = (
            select(
                c.replica_id,
                func.count(),
                func.coalesce(func.sum(c.prompt_tokens), 0),
                func.coalesce(func.sum(c.cached_tokens), 0),
                func.coalesce(func.sum(c.completion_tokens), 0),
            )
            .where(c.replica_id.is_not(None), c.started_at >= since)
            .group_by(c.replica_id)
        )
        if until is not None:
            query = query.where(c.started_at < until)
        if replica_ids is not None:
            query = query.where(c.replica_id.in_(list(replica_ids)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {str(r[0]): TokenTotals(int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
