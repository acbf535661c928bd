"""Which price book rates which usage: roll-ups of days with one book in force, events of days split by a change.

A roll-up covers a whole UTC day, but a book comes into force at an instant. On the (rare) day another book came
into force, the roll-ups cannot say which usage came before the change, so that day is summed from its events
instead, per tenant, model, adapter, GPU type and book: one aggregate query over the day's events of the tenants in
the report, using the (tenant_id, started_at) index, summed as the roll-ups sum them (tokens of the gateway's own
failures are not billed). Every other day is rated from its roll-ups alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from itertools import groupby
from typing import Any

from sqlalchemy import case, func, select

from fleetgate.billing.rating import PriceBook, book_changes
from fleetgate.db.schema import usage_events
from fleetgate.metering.events import UNBILLED_STATUSES
from fleetgate.metering.ledger import STATUS_COLUMNS, DailyUsage, SqlLedger

DAY_SECONDS = 86_400.0
COLUMNS = tuple(dict.fromkeys(STATUS_COLUMNS.values()))  # roll-up status columns ("errors" counts two statuses)


def day_start(day: date) -> float:
    """Unix time of a UTC day's first instant."""
    return datetime.combine(day, time(), UTC).timestamp()


async def rated_rows(
    ledger: SqlLedger, rows: Sequence[DailyUsage], books: Sequence[PriceBook], tenant_id: str | None = None
) -> list[tuple[DailyUsage, PriceBook | None]]:
    """Each piece of usage with the book that rates it (None: no book at all); `rows` ordered by day."""
    out: list[tuple[DailyUsage, PriceBook | None]] = []
    for day, group in groupby(rows, key=lambda r: r.day):
        day_rows = list(group)
        start = day_start(day)
        pieces = book_changes(books, start, start + DAY_SECONDS)
        if len(pieces) == 1:
            out.extend((row, pieces[0][1]) for row in day_rows)
            continue
        tenants = [tenant_id] if tenant_id is not None else sorted({r.tenant_id for r in day_rows})
        out.extend(await _split_day(ledger, day, pieces, tenants))
    return out


async def _split_day(
    ledger: SqlLedger, day: date, pieces: list[tuple[float, PriceBook | None]], tenants: list[str]
) -> list[tuple[DailyUsage, PriceBook | None]]:
    c = usage_events.c
    start = day_start(day)
    # The latest change first: an event belongs to the last piece that started at or before it.
    piece = case(*[(c.started_at >= at, i) for i, (at, _) in reversed(list(enumerate(pieces))) if i > 0], else_=0)
    statuses = [
        func.sum(case((c.status.in_([s for s, col in STATUS_COLUMNS.items() if col == column]), 1), else_=0))
        for column in COLUMNS
    ]
    billed = c.status.not_in(sorted(UNBILLED_STATUSES))

    def tokens(column: Any) -> Any:
        return func.sum(case((billed, column), else_=0))

    query = (
        select(
            c.tenant_id,
            c.model,
            c.adapter,
            c.gpu_type,
            piece,
            func.count(),
            tokens(c.prompt_tokens),
            tokens(c.cached_tokens),
            tokens(c.completion_tokens),
            func.sum(case((c.ended_at > c.started_at, c.ended_at - c.started_at), else_=0.0)),
            *statuses,
        )
        .where(c.tenant_id.in_(tenants), c.started_at >= start, c.started_at < start + DAY_SECONDS)
        .group_by(c.tenant_id, c.model, c.adapter, c.gpu_type, piece)
    )
    async with ledger.engine.connect() as conn:
        found = (await conn.execute(query)).all()
    return [(_usage(day, tuple(r)), pieces[int(r[4])][1]) for r in found]


def _usage(day: date, r: tuple[Any, ...]) -> DailyUsage:
    requests = int(r[5])
    counts = {column: int(n or 0) for column, n in zip(COLUMNS, r[10:], strict=True)}
    # A status this code does not know counts as an error, as the roll-ups count it.
    counts["errors"] += requests - sum(counts.values())
    return DailyUsage(
        day=day,
        tenant_id=str(r[0]),
        model=str(r[1]),
        adapter=r[2] or None,
        gpu_type=r[3] or None,
        requests=requests,
        prompt_tokens=int(r[6] or 0),
        cached_tokens=int(r[7] or 0),
        completion_tokens=int(r[8] or 0),
        busy_seconds=float(r[9] or 0.0),
        **counts,
    )
