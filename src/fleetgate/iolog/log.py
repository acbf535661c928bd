"""The request/response I/O log: per-tenant opt-in, its own store, redacted before storage, expired by a sweeper.

The ledger never holds prompt text; this log is the only place prompts may be kept, and only for tenants that
opted in. It must never slow or break serving: `IOLog.record` only slices the bodies and enqueues them (bounded
by count and bytes; when full the record is dropped and counted), and a background task redacts, truncates and
batch-writes. A store outage is logged once, counted in `write_errors` and never raised to a request.

Why `metadata.create_all` rather than an Alembic migration: this store is not the money path and holds nothing
that must survive a schema change (every row expires within its retention), it lives in its own database by
default (`iolog.url`), and its schema is one table that `create_all` makes idempotently when the log opens. A
future incompatible change can use a new table name and let the old one age out. If `iolog.url` is pointed at
the tenancy database, `io_records` simply sits beside the migrated tables, unknown to Alembic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Column, DateTime, Index, MetaData, Row, String, Table, Text, and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from fleetgate.config import IOLogConfig
from fleetgate.db.engine import make_engine
from fleetgate.domain.errors import InvalidRequest, UpstreamUnavailable
from fleetgate.iolog.redaction import SCAN_SLACK, Redactor

log = logging.getLogger(__name__)

metadata = MetaData()

io_records = Table(
    "io_records",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("key_id", String(64)),
    Column("model", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("status", String(32), nullable=False),
    Column("request_body", Text, nullable=False),  # redacted, then truncated to iolog.max_body_bytes
    Column("response_body", Text, nullable=False),  # for a stream: the SSE text the client received
    Column("truncated", Boolean, nullable=False),
    Index("ix_io_records_tenant_created", "tenant_id", "created_at"),
    Index("ix_io_records_expires_at", "expires_at"),
)

MAX_RETENTION_DAYS = 36_500.0  # beyond this a timedelta overflows soon enough; nobody means "more than a century"
_MAX_BACKOFF = 5.0
_DROP_LOG_EVERY = 60.0


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything in fleetgate is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL; one such body must not fail the whole batch it is written with.
    return text.replace("\x00", "\ufffd")


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy messages go on to quote the statement and its parameters (the bodies): keep the headline only.
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _public(row: Row[Any]) -> dict[str, Any]:
    data = row._mapping
    return {
        "request_id": data["request_id"],
        "tenant_id": data["tenant_id"],
        "key_id": data["key_id"],
        "model": data["model"],
        "status": data["status"],
        "created_at": _utc(data["created_at"]).isoformat(),
        "expires_at": _utc(data["expires_at"]).isoformat(),
        "truncated": bool(data["truncated"]),
        "request_body": data["request_body"],
        "response_body": data["response_body"],
    }


def _insert_for(dialect: str) -> Insert:
    # A replayed request id is a no-op, as in the ledger, so a retried gateway write never fails a whole batch.
    if dialect == "postgresql":
        return pg_insert(io_records).on_conflict_do_nothing(index_elements=["request_id"])
    if dialect == "sqlite":
        return sqlite_insert(io_records).on_conflict_do_nothing(index_elements=["request_id"])
    return io_records.insert()


@dataclass(slots=True)
class _Pending:
    """One exchange waiting for the writer: bodies already cut to the scan window, nothing redacted yet."""

    request_id: str
    tenant_id: str
    key_id: str | None
    model: str
    status: str
    request_body: bytes
    request_cut: bool
    response_body: bytes
    response_cut: bool
    retention_days: float | None
    created_at: datetime

    @property
    def size(self) -> int:
        return len(self.request_body) + len(self.response_body)


class IOLog:
    """Per-tenant request/response logging to its own store; `record` is the only call on the serving path."""

    def __init__(
        self,
        config: IOLogConfig,
        *,
        max_queued: int = 10_000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 200,
        sweep_batch: int = 1000,
        open_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.redactor = Redactor(config)  # a bad `iolog.patterns` entry fails here, at startup, naming the field
        self._engine = make_engine(config.url)
        self._insert = _insert_for(self._engine.dialect.name)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queued)
        self._queued_bytes = 0
        self._max_queued_bytes = max_queued_bytes
        self._batch_size = batch_size
        self._sweep_batch = sweep_batch
        self._open_timeout = open_timeout
        # Bodies are cut to this before queueing, so memory is bounded whatever a client sends; the slack lets
        # redaction see a secret that straddles the stored size.
        self._window = config.max_body_bytes + SCAN_SLACK
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._closed = False
        self._store_down = False
        self._backoff = 0.0
        self._last_drop_log = -math.inf
        self._writer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0
        self.write_errors = 0

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Create the table if needed and start the writer and the sweeper; a store outage does not fail this."""
        if self._writer is not None:
            return
        self._closed = False
        try:
            await asyncio.wait_for(self._ensure_schema(), self._open_timeout)
        except (SQLAlchemyError, OSError) as exc:  # TimeoutError is an OSError; the writer retries the schema
            self._note_store_error(exc)
        self._writer = asyncio.create_task(self._write_loop(), name="fleetgate-iolog-writer")
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="fleetgate-iolog-sweeper")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop taking records, write what is queued for at most `timeout` seconds, then close the store."""
        self._closed = True
        if self._writer is not None and not await self.flush(timeout):
            log.warning("I/O log: %d records not written within %.1f s of shutdown; dropped", self.queued, timeout)
        for task in (self._writer, self._sweeper):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._writer, self._sweeper) if t is not None), return_exceptions=True)
        self._writer = self._sweeper = None
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
        self._queued_bytes = 0
        await self._engine.dispose()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is written or failed; False on timeout or if not started."""
        if self._writer is None:
            return self._queue.empty()
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    def record(
        self,
        *,
        request_id: str,
        tenant_id: str,
        key_id: str | None,
        model: str,
        status: str,
        request_body: bytes,
        response_body: bytes,
        retention_days: float | None,
    ) -> None:
        """Queue one exchange for redaction and storage; never blocks or raises (when full: dropped and counted).

        Call it from the event loop thread. `retention_days` None means `iolog.default_retention_days`.
        """
        if self._closed:
            self.dropped += 1
            return
        window = self._window
        pending = _Pending(
            request_id=request_id,
            tenant_id=tenant_id,
            key_id=key_id,
            model=model,
            status=status,
            request_body=request_body[:window],
            request_cut=len(request_body) > window,
            response_body=response_body[:window],
            response_cut=len(response_body) > window,
            retention_days=retention_days,
            created_at=_now(),
        )
        size = pending.size
        if self._queue.full() or self._queued_bytes + size > self._max_queued_bytes:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= _DROP_LOG_EVERY:
                self._last_drop_log = now
                log.warning("I/O log queue full: dropping records (%d dropped so far)", self.dropped)
            return
        self._queue.put_nowait(pending)
        self._queued_bytes += size

    async def read(self, tenant_id: str, limit: int = 20, before: str | None = None) -> list[dict[str, Any]]:
        """The tenant's unexpired records, newest first; `before` is a request id from a previous page."""
        c = io_records.c
        now = _now()
        query = (
            select(io_records)
            .where(c.tenant_id == tenant_id, c.expires_at > now)
            .order_by(c.created_at.desc(), c.request_id.desc())
            .limit(max(1, min(limit, 1000)))
        )
        async with self._reading() as conn:
            if before is not None:
                at = await conn.scalar(select(c.created_at).where(c.tenant_id == tenant_id, c.request_id == before))
                if at is None:
                    # The same answer for an unknown id and another tenant's, so cursors reveal nothing.
                    raise InvalidRequest("`before` is not the id of one of your log records", param="before")
                query = query.where(or_(c.created_at < at, and_(c.created_at == at, c.request_id < before)))
            rows = (await conn.execute(query)).all()
        return [_public(r) for r in rows]

    async def get(self, tenant_id: str, request_id: str) -> dict[str, Any] | None:
        """One of the tenant's unexpired records, or None (also for another tenant's record)."""
        c = io_records.c
        query = select(io_records).where(c.request_id == request_id, c.tenant_id == tenant_id, c.expires_at > _now())
        async with self._reading() as conn:
            row = (await conn.execute(query)).first()
        return _public(row) if row is not None else None

    async def sweep(self) -> int:
        """Delete records past their expiry in bounded batches (short transactions); returns how many went."""
        await self._ensure_schema()
        c = io_records.c
        total = 0
        while True:
            batch = select(c.request_id).where(c.expires_at <= _now()).limit(self._sweep_batch)
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(io_records).where(c.request_id.in_(batch.scalar_subquery())))
            total += max(result.rowcount, 0)
            if result.rowcount < self._sweep_batch:
                return total
            await asyncio.sleep(0)  # let serving run between batches of a large backlog

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        try:
            await self._ensure_schema()
            async with self._engine.connect() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            log.warning("I/O log read failed: %s", _first_line(exc))
            raise UpstreamUnavailable(
                "the request log is unavailable right now; retry shortly", retry_after=5
            ) from None

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                async with self._engine.begin() as conn:
                    await conn.run_sync(metadata.create_all)
                self._schema_ready = True

    def _retention(self, days: float | None) -> timedelta:
        if days is None or not math.isfinite(days):
            days = self.config.default_retention_days
        # Zero or less keeps nothing readable (expired at once, swept next pass).
        return timedelta(days=min(max(days, 0.0), MAX_RETENTION_DAYS))

    def _row(self, item: _Pending) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        request, request_truncated = self.redactor.redact_body(item.request_body, limit, cut=item.request_cut)
        response, response_truncated = self.redactor.redact_body(item.response_body, limit, cut=item.response_cut)
        return {
            # Clamped to the column sizes so one odd value cannot fail the batch on PostgreSQL.
            "request_id": item.request_id[:64],
            "tenant_id": item.tenant_id[:64],
            "key_id": None if item.key_id is None else item.key_id[:64],
            "model": item.model[:200],
            "status": item.status[:32],
            "created_at": item.created_at,
            "expires_at": item.created_at + self._retention(item.retention_days),
            "request_body": _storable(request),
            "response_body": _storable(response),
            "truncated": request_truncated or response_truncated,
        }

    async def _write(self, batch: list[_Pending]) -> None:
        rows = []
        for item in batch:
            rows.append(self._row(item))
            await asyncio.sleep(0)  # redaction is CPU work on the serving loop: hand it back between records
        try:
            await self._ensure_schema()
            async with self._engine.begin() as conn:
                await conn.execute(self._insert, rows)
        except (SQLAlchemyError, OSError) as exc:
            # Not retried: the log is best effort and memory stays bounded; the count says what was lost.
            self.write_errors += len(rows)
            self._note_store_error(exc)
            return
        self.written += len(rows)
        if self._store_down:
            log.warning("I/O log store reachable again; %d records were lost while it was down", self.write_errors)
        self._store_down = False
        self._backoff = 0.0

    def _note_store_error(self, exc: BaseException) -> None:
        if not self._store_down:
            log.warning("I/O log store unreachable (%s); records are dropped until it recovers", _first_line(exc))
        self._store_down = True
        self._backoff = min(max(self._backoff * 2, 0.1), _MAX_BACKOFF)

    async def _write_loop(self) -> None:
        while True:
            if self._backoff:
                await asyncio.sleep(self._backoff)
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                self.dropped += len(batch)  # stop() stopped waiting: this batch was never stored
                raise
            except Exception:  # the writer's outermost boundary: a bug costs this batch, never the writer or serving
                log.exception("I/O log: unexpected error writing %d records; they are lost", len(batch))
                self.write_errors += len(batch)
            finally:
                self._queued_bytes -= sum(item.size for item in batch)
                for _ in batch:
                    self._queue.task_done()

    async def _sweep_loop(self) -> None:
        interval = self.config.sweep_interval
        while True:
            try:
                swept = await self.sweep()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("I/O log retention sweep failed (%s); next try in %.0f s", _first_line(exc), interval)
            else:
                if swept:
                    log.info("I/O log retention sweep deleted %d expired records", swept)
            await asyncio.sleep(interval)
