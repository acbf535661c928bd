"""The SQL ledger on SQLite and PostgreSQL: idempotent inserts, exact roll-ups, bounded queries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import event, inspect

from fleetgate.db.engine import downgrade
from fleetgate.domain.errors import InvalidRequest
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.ledger import MAX_BATCH, MAX_CHUNK, DailyUsage, SqlLedger, TokenTotals, chunk_sizes

DAY1 = datetime(2026, 11, 2, tzinfo=UTC).timestamp()
DAY2 = datetime(2026, 11, 3, tzinfo=UTC).timestamp()


def ev(n: int, **kw: Any) -> UsageEvent:
    """Event n: prompt 100+n (cached n), completion 10+n, one second long, on DAY1 unless told."""
    started = kw.pop("started_at", DAY1 + n)
    data: dict[str, Any] = {
        "event_id": f"ev-{n:05d}",
        "tenant_id": "t-a",
        "key_id": "k-1",
        "model": "smollm2",
        "adapter": None,
        "replica_id": "local-0",
        "engine": "llamacpp",
        "gpu_type": "cpu",
        "started_at": started,
        "first_token_at": started + 0.25,
        "ended_at": started + 1.0,
        "prompt_tokens": 100 + n,
        "cached_tokens": n,
        "completion_tokens": 10 + n,
        "status": "ok",
        "usage_source": "engine",
        "stream": True,
    }
    data.update(kw)
    return UsageEvent(**data)


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[SqlLedger]:
    store = await SqlLedger.open(db_url, batch_size=7)  # small batches: many transactions per insert
    yield store
    await store.close()


def only(rows: list[DailyUsage]) -> DailyUsage:
    assert len(rows) == 1, rows
    return rows[0]


async def test_same_batch_twice_counts_once(ledger: SqlLedger) -> None:
    batch = [ev(1), ev(2, status="client_abort"), ev(3, status="engine_error")]
    assert await ledger.insert(batch) == 3
    assert await ledger.insert(batch) == 0
    row = only(await ledger.daily())
    # By hand: prompts 101+102+103, cached 1+2+3, completions 11+12+13, three 1-second requests.
    assert (row.requests, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (3, 306, 6, 36)
    assert row.fresh_tokens == 300 and row.busy_seconds == pytest.approx(3.0)
    assert (row.ok, row.aborts, row.errors, row.timeouts, row.rejected, row.lost) == (1, 1, 1, 0, 0, 0)
    assert (row.day, row.tenant_id, row.model, row.adapter, row.gpu_type) == (
        date(2026, 11, 2),
        "t-a",
        "smollm2",
        None,
        "cpu",
    )


async def test_overlapping_batches_add_only_new_rows(ledger: SqlLedger) -> None:
    assert await ledger.insert([ev(1), ev(2), ev(3)]) == 3
    assert await ledger.insert([ev(2), ev(3), ev(4), ev(5, status="gateway_lost")]) == 2
    assert await ledger.insert([ev(5), ev(1)]) == 0
    row = only(await ledger.daily())
    # 5 events; the roll-up's tokens are the billable ones, so the gateway_lost event (5) is not in them:
    # prompts 101..104 = 410, cached 1..4 = 10, completions 11..14 = 50.
    assert (row.requests, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (5, 410, 10, 50)
    assert (row.ok, row.lost) == (4, 1)
    lost = await ledger.get(ev(5).event_id)
    assert lost is not None and lost.prompt_tokens == 105  # the event keeps what the engine did (reconcile reads it)


async def test_duplicate_ids_inside_one_call(ledger: SqlLedger) -> None:
    assert await ledger.insert([ev(1), ev(1), ev(2), ev(1)]) == 2
    assert only(await ledger.daily()).requests == 2


async def test_concurrent_inserts_from_two_writers(db_url: str, ledger: SqlLedger) -> None:
    # A second ledger on its own connection pool stands in for a second gateway process.
    other = await SqlLedger.open(db_url, batch_size=13)
    try:
        events = [ev(n) for n in range(300)]
        first, second = events[:200], events[100:]  # 100 events overlap
        random.Random(7).shuffle(first)
        random.Random(8).shuffle(second)
        new = await asyncio.gather(ledger.insert(first), other.insert(second), ledger.insert(events[150:250]))
        assert sum(new) == 300
    finally:
        await other.close()
    row = only(await ledger.daily())
    assert row.requests == 300
    assert row.prompt_tokens == sum(100 + n for n in range(300))
    assert row.cached_tokens == sum(range(300))
    assert row.completion_tokens == sum(10 + n for n in range(300))
    assert row.busy_seconds == pytest.approx(300.0)


async def test_statement_texts_do_not_grow_with_batch_sizes(db_url: str) -> None:
    # Every distinct SQL text is a prepared statement the driver keeps per connection (sqlite3 caches 128,
    # asyncpg 100): one per batch size made a gateway's memory grow under a flood of rejected requests.
    store = await SqlLedger.open(db_url, batch_size=MAX_BATCH)
    texts: set[str] = set()

    def record(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        texts.add(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    rng = random.Random(3)
    sizes = [rng.randint(1, 300) for _ in range(40)] + [MAX_BATCH]
    n = 0
    try:
        for size in sizes:
            batch = [ev(n + i) for i in range(size)]
            assert await store.insert(batch) == size
            assert await store.insert(batch[: size // 2 + 1]) == 0  # still insert-or-ignore by event_id
            n += size
        assert only(await store.daily()).requests == n
    finally:
        await store.close()
    inserts = {t for t in texts if t.startswith("INSERT INTO usage_events")}
    # powers of two up to 512 only, whatever the batch sizes (40 random sizes gave ~40 texts before)
    assert len(inserts) <= MAX_CHUNK.bit_length(), len(inserts)
    # the rest: the roll-up upsert and the daily read, plus SQLite's BEGIN IMMEDIATE and its id lookup
    assert len(texts - inserts) <= 4, sorted(t[:60] for t in texts)


def test_chunk_sizes_are_powers_of_two_that_add_up() -> None:
    for n in [*range(0, 1100), 5000]:
        sizes = chunk_sizes(n)
        assert sum(sizes) == n and sizes == sorted(sizes, reverse=True)
        assert all(s & (s - 1) == 0 and s <= MAX_CHUNK for s in sizes)
        assert len(sizes) <= n // MAX_CHUNK + MAX_CHUNK.bit_length()


async def test_rollups_split_by_day_tenant_model_adapter_and_gpu(ledger: SqlLedger) -> None:
    await ledger.insert(
        [
            ev(1),
            ev(2, started_at=DAY2 + 5),
            ev(3, tenant_id="t-b"),
            ev(4, adapter="support-bot"),
            ev(5, gpu_type=None),
            ev(6, model="other"),
        ]
    )
    rows = await ledger.daily()
    keys = [(r.day.day, r.tenant_id, r.model, r.adapter, r.gpu_type) for r in rows]
    assert keys == [
        (2, "t-a", "other", None, "cpu"),
        (2, "t-a", "smollm2", None, None),
        (2, "t-a", "smollm2", None, "cpu"),
        (2, "t-a", "smollm2", "support-bot", "cpu"),
        (2, "t-b", "smollm2", None, "cpu"),
        (3, "t-a", "smollm2", None, "cpu"),
    ]
    assert [r.tenant_id for r in await ledger.daily(tenant_id="t-b")] == ["t-b"]
    assert [r.day.day for r in await ledger.daily(since=date(2026, 11, 3))] == [3]
    assert len(await ledger.daily(until=date(2026, 11, 2))) == 5  # until is inclusive
    assert await ledger.daily(since=date(2026, 11, 4)) == []


async def test_events_round_trip_and_paginate(ledger: SqlLedger) -> None:
    special = ev(1, adapter="a1", first_token_at=None, replica_id=None, engine=None, stream=False, http_status=499)
    others = [ev(n, tenant_id="t-b" if n % 3 == 0 else "t-a") for n in range(2, 30)]
    await ledger.insert([special, *others])
    assert await ledger.get("ev-00001") == special  # every field survives, None included
    assert await ledger.get("nope") is None
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await ledger.events(tenant_id="t-a", limit=5, after=cursor)
        seen += [e.event_id for e in page.events]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = ["ev-00001", *(f"ev-{n:05d}" for n in range(2, 30) if n % 3)]
    assert seen == expected and pages == 4  # 19 events, 5 per page
    window = await ledger.events(since=DAY1 + 10, until=DAY1 + 13)
    assert [e.event_id for e in window.events] == ["ev-00010", "ev-00011", "ev-00012"]
    assert window.next_cursor is None
    with pytest.raises(InvalidRequest):
        await ledger.events(limit=0)
    with pytest.raises(InvalidRequest):
        await ledger.events(limit=5000)
    with pytest.raises(InvalidRequest):
        await ledger.events(after="garbage")


async def test_replica_totals_since(ledger: SqlLedger) -> None:
    await ledger.insert([ev(1), ev(2, replica_id="local-1"), ev(3), ev(4, replica_id=None)])
    totals = await ledger.replica_totals(DAY1)
    assert totals == {
        "local-0": TokenTotals(requests=2, prompt_tokens=204, cached_tokens=4, completion_tokens=24),
        "local-1": TokenTotals(requests=1, prompt_tokens=102, cached_tokens=2, completion_tokens=12),
    }
    assert await ledger.replica_totals(DAY1 + 2.5) == {"local-0": TokenTotals(1, 103, 3, 13)}
    assert await ledger.replica_totals(DAY1, replica_ids=["local-1"]) == {"local-1": TokenTotals(1, 102, 2, 12)}
    assert await ledger.replica_totals(DAY1, until=DAY1 + 1.5) == {"local-0": TokenTotals(1, 101, 1, 11)}


async def test_events_are_immutable_and_tables_migrate_down(ledger: SqlLedger) -> None:
    assert not any(hasattr(SqlLedger, name) for name in ("update", "delete", "upsert"))
    await ledger.insert([ev(1)])
    await downgrade(ledger.engine, "0001_tenancy")
    async with ledger.engine.connect() as conn:
        tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    assert not tables & {"usage_events", "usage_daily", "price_books"} and "tenants" in tables
