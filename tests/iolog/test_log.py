"""The I/O log service on SQLite and PostgreSQL: redaction before storage, truncation, retention, scoping, outages."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from fleetgate.config import IOLogConfig
from fleetgate.db.engine import make_engine
from fleetgate.domain.errors import InvalidRequest, UpstreamUnavailable
from fleetgate.domain.ids import request_id
from fleetgate.iolog.log import IOLog, io_records
from fleetgate.iolog.redaction import EMAIL_MARK, KEY_MARK, PHONE_MARK

SECRET_KEY = "fg-demo-0123456789abcdef"
PROMPT = (
    '{"model":"smollm2","messages":[{"role":"user","content":"I am bob@example.com, call +44 20 7946 0958, '
    f'my key is {SECRET_KEY}, use header Authorization: Bearer sk-proj-abcDEF1234567890abcdefXYZ"}}]}}'
).encode()
ANSWER = b'{"choices":[{"message":{"content":"Noted, bob@example.com."}}],"usage":{"prompt_tokens":1234}}'
SECRETS = ["bob@example.com", "7946", SECRET_KEY, "0123456789abcdef", "sk-proj", "abcDEF1234567890"]


def _record(log: IOLog, tenant: str = "tenant-a", rid: str | None = None, **over: Any) -> str:
    rid = rid or request_id()
    fields: dict[str, Any] = {
        "request_id": rid,
        "tenant_id": tenant,
        "key_id": "key-1",
        "model": "smollm2",
        "status": "ok",
        "request_body": PROMPT,
        "response_body": ANSWER,
        "retention_days": None,
    }
    fields.update(over)
    log.record(**fields)
    return rid


def _peak_allocated(work: Callable[[], None]) -> int:
    """The most memory Python held for `work` at any moment (tracemalloc), in bytes."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()


async def _raw_rows(url: str) -> list[dict[str, Any]]:
    """Read the table as stored, bypassing the service."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(select(io_records))).all()]
    finally:
        await engine.dispose()


@pytest.fixture
async def iolog(db_url: str) -> AsyncIterator[IOLog]:
    log = IOLog(IOLogConfig(url=db_url, max_body_bytes=1024))
    await log.start()
    yield log
    await log.stop()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_redaction_happens_before_storage(iolog: IOLog, db_url: str) -> None:
    rid = _record(iolog)
    assert await iolog.flush() and iolog.written == 1 and iolog.write_errors == 0
    (row,) = await _raw_rows(db_url)
    stored = repr(row)
    for secret in SECRETS:
        assert secret not in stored, secret
    for mark in (EMAIL_MARK, PHONE_MARK, KEY_MARK):
        assert mark in row["request_body"]
    assert "Authorization: Bearer " + KEY_MARK in row["request_body"]
    assert row["response_body"].startswith('{"choices"') and '"prompt_tokens":1234' in row["response_body"]
    assert row["request_id"] == rid and row["tenant_id"] == "tenant-a" and row["truncated"] is False
    got = await iolog.get("tenant-a", rid)
    assert got is not None and got["request_body"] == row["request_body"] and got["key_id"] == "key-1"


async def test_bodies_are_truncated_to_max_body_bytes(iolog: IOLog, db_url: str) -> None:
    big = ("é" * 3000).encode()
    long_id = _record(iolog, request_body=big, response_body=b"data: x\n\n" * 400)
    short_id = _record(iolog)
    await iolog.flush()
    rows = {r["request_id"]: r for r in await _raw_rows(db_url)}
    long_row = rows[long_id]
    assert long_row["truncated"] is True
    assert len(long_row["request_body"].encode()) <= 1024 and long_row["request_body"].startswith("éé")
    assert len(long_row["response_body"].encode()) <= 1024
    assert rows[short_id]["truncated"] is False


async def test_retention_per_record_and_expired_rows_are_hidden_then_swept(iolog: IOLog, db_url: str) -> None:
    default = _record(iolog)
    one_day = _record(iolog, retention_days=1.0)
    expired = _record(iolog, retention_days=2.0)
    await iolog.flush()
    rows = {r["request_id"]: r for r in await _raw_rows(db_url)}

    def days(rid: str) -> float:
        return float((rows[rid]["expires_at"] - rows[rid]["created_at"]) / timedelta(days=1))

    assert days(default) == pytest.approx(30.0) and days(one_day) == pytest.approx(1.0)
    engine = make_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(
            update(io_records)
            .where(io_records.c.request_id == expired)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await engine.dispose()
    # Past its expiry a record is no longer readable, even before the sweeper got to it.
    assert await iolog.get("tenant-a", expired) is None
    assert {r["request_id"] for r in await iolog.read("tenant-a", 10)} == {default, one_day}
    assert await iolog.sweep() == 1
    assert {r["request_id"] for r in await _raw_rows(db_url)} == {default, one_day}
    assert await iolog.sweep() == 0


async def test_sweep_deletes_in_bounded_batches(db_url: str) -> None:
    log = IOLog(IOLogConfig(url=db_url), sweep_batch=2)
    await log.start()
    try:
        kept = _record(log)
        for _ in range(5):
            _record(log, retention_days=0)  # expires at once
        await log.flush()
        assert len(await _raw_rows(db_url)) == 6
        assert await log.sweep() == 5
        assert [r["request_id"] for r in await _raw_rows(db_url)] == [kept]
    finally:
        await log.stop()


async def test_the_sweeper_task_enforces_retention_by_itself(sqlite_url: str) -> None:
    log = IOLog(IOLogConfig(url=sqlite_url, sweep_interval=0.05))
    await log.start()
    try:
        _record(log, retention_days=0)
        kept = _record(log)
        await log.flush()
        for _ in range(100):
            rows = await _raw_rows(sqlite_url)
            if len(rows) == 1:
                break
            await asyncio.sleep(0.05)
        assert [r["request_id"] for r in rows] == [kept]
    finally:
        await log.stop()


async def test_reads_are_scoped_to_the_tenant_and_paginate(iolog: IOLog) -> None:
    mine = [_record(iolog, "tenant-a") for _ in range(5)]
    theirs = [_record(iolog, "tenant-b") for _ in range(2)]
    await iolog.flush()
    page1 = await iolog.read("tenant-a", 2)
    assert [r["request_id"] for r in page1] == mine[::-1][:2]
    page2 = await iolog.read("tenant-a", 2, before=page1[-1]["request_id"])
    page3 = await iolog.read("tenant-a", 2, before=page2[-1]["request_id"])
    assert [r["request_id"] for r in page1 + page2 + page3] == mine[::-1]
    assert {r["tenant_id"] for r in page1 + page2 + page3} == {"tenant-a"}
    assert await iolog.get("tenant-a", theirs[0]) is None
    assert await iolog.get("tenant-b", theirs[0]) is not None
    with pytest.raises(InvalidRequest) as err:
        await iolog.read("tenant-a", 2, before=theirs[0])  # a foreign cursor is as unknown as a made-up one
    assert err.value.param == "before"
    assert [r["request_id"] for r in await iolog.read("tenant-b", 10)] == theirs[::-1]


async def test_a_replayed_request_id_does_not_fail_its_batch(iolog: IOLog, db_url: str) -> None:
    rid = _record(iolog)
    _record(iolog, rid=rid)
    other = _record(iolog)
    await iolog.flush()
    assert iolog.write_errors == 0
    assert sorted(r["request_id"] for r in await _raw_rows(db_url)) == sorted([rid, other])


async def test_a_nul_byte_in_a_body_does_not_fail_its_batch(iolog: IOLog, db_url: str) -> None:
    # PostgreSQL text cannot hold NUL; one odd body must not cost the records written with it.
    ids = {_record(iolog, request_body=b"a\x00b"), _record(iolog)}
    await iolog.flush()
    assert iolog.write_errors == 0 and {r["request_id"] for r in await _raw_rows(db_url)} == ids


async def test_a_store_that_is_down_never_raises_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    log = IOLog(IOLogConfig(url=f"postgresql://fleetgate@127.0.0.1:{_closed_port()}/iolog"), open_timeout=2)
    with caplog.at_level(logging.WARNING, logger="fleetgate.iolog.log"):
        await log.start()  # does not raise: serving must start without its log store
        for _ in range(3):
            _record(log)
        assert await log.flush(10)
        _record(log)
        assert await log.flush(10)
    assert log.write_errors == 4 and log.written == 0 and log.dropped == 0
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # logged once, not once per batch
    with pytest.raises(UpstreamUnavailable):
        await log.read("tenant-a", 10)
    started = time.monotonic()
    await log.stop()
    assert time.monotonic() - started < 6


async def test_a_full_queue_drops_and_counts(sqlite_url: str) -> None:
    log = IOLog(IOLogConfig(url=sqlite_url), max_queued=3)  # not started: nothing drains the queue yet
    for _ in range(5):
        _record(log)
    assert log.dropped == 2 and log.queued == 3
    await log.start()
    assert await log.flush()
    assert log.written == 3 and len(await _raw_rows(sqlite_url)) == 3
    await log.stop()


async def test_huge_bodies_are_cut_before_queueing_and_bytes_are_bounded(sqlite_url: str) -> None:
    log = IOLog(IOLogConfig(url=sqlite_url, max_body_bytes=1024), max_queued_bytes=50_000)
    huge = b"x" * 5_000_000

    def six() -> None:
        for _ in range(6):
            _record(log, request_body=huge, response_body=huge)

    assert _peak_allocated(six) < 1_000_000  # slicing, not copying: one copy of one body would be 5 MB
    # Each record holds at most 2 x (1024 + 4096) bytes, so four fit in 50,000 and the rest are dropped.
    assert log.queued == 4 and log.dropped == 2
    await log.start()
    await log.stop()
    rows = await _raw_rows(sqlite_url)
    assert len(rows) == 4 and all(r["truncated"] and len(r["request_body"]) <= 1024 for r in rows)


async def test_stop_drains_the_queue_and_later_records_are_dropped(db_url: str) -> None:
    log = IOLog(IOLogConfig(url=db_url), batch_size=50)
    await log.start()
    ids = {_record(log) for _ in range(300)}
    await log.stop()
    assert log.written == 300 and log.dropped == 0
    assert {r["request_id"] for r in await _raw_rows(db_url)} == ids
    _record(log)
    assert log.dropped == 1


async def test_record_is_cheap_on_the_serving_path(sqlite_url: str) -> None:
    log = IOLog(IOLogConfig(url=sqlite_url), max_queued_bytes=1 << 30)
    body = PROMPT * 200  # 41 kB, inside the window: kept by reference until the writer redacts it

    def many() -> None:
        for _ in range(500):
            _record(log, request_body=body, response_body=body)

    # Memory, not seconds (timings flake on a loaded machine; bench/ measures speed): a record costs its few
    # fields, so no body is copied, encoded or redacted on the serving path (that would be 80 kB per call).
    peak = _peak_allocated(many)
    assert log.queued == 500 and peak < 500 * 1024, f"{peak / 500:.0f} bytes per record()"
    await log.stop()
