"""The flusher under faults: poison records are quarantined, a failing pass never stops delivery, and a sink down
for long is bounded by dead letters while the ledger stays current."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fleetgate.config import NatsSinkConfig
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.ledger import SqlLedger
from fleetgate.metering.ledger_worker import LedgerWorker
from fleetgate.metering.outbox import Outbox, OutboxUnavailable, segment_name
from fleetgate.metering.sinks.nats import NatsSink
from tests.fakes import free_port
from tests.metering.test_outbox import ListSink, MemoryLedger, _event, _start
from tests.waiting import wait_until

POISON: list[bytes] = [
    b'{"t":"f","e":{"event_id":"no-tenant","key_id":"k"}}',  # required fields missing
    b'{"t":"f","e":' + _event("bad-type").to_json().replace(b'"prompt_tokens":20', b'"prompt_tokens":"20"') + b"}",
    b'{"t":"f","e":' + _event("bad-status").to_json().replace(b'"status":"ok"', b'"status":["ok"]') + b"}",
    b'{"t":"f","e":"not an object"}',
    b'{"t":"f"}',
    b"[1,2,3]",
]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox", segment_bytes=1 << 20, fsync_interval=0)
    box.open()
    return box


@pytest.fixture
async def sql_ledger(tmp_path: Path) -> AsyncIterator[SqlLedger]:
    ledger = await SqlLedger.open(f"sqlite:///{tmp_path}/ledger.db")
    yield ledger
    await ledger.close()


def _write_poison(box: Outbox) -> None:
    for line in POISON:
        os.write(box._fd, line + b"\n")  # as if a bug or a bad hand edit had put it there


def _dead_letters(box: Outbox, consumer: str) -> list[dict[str, Any]]:
    path = box.directory / "dead-letter" / f"{consumer}.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def test_a_poison_record_is_quarantined_and_the_events_behind_it_reach_the_ledger(
    outbox: Outbox, sql_ledger: SqlLedger, caplog: pytest.LogCaptureFixture
) -> None:
    outbox.finished(_event("before"))
    _write_poison(outbox)
    outbox.finished(_event("after"))
    flusher = Flusher(outbox, sql_ledger)
    with caplog.at_level(logging.ERROR, logger="fleetgate.metering.flusher"):
        assert await flusher.flush_once() == 2
    rows = {e.event_id for e in (await sql_ledger.events(limit=10)).events}
    assert rows == {"before", "after"}
    quarantined = _dead_letters(outbox, "ledger")
    assert len(quarantined) == flusher.dead_lettered["ledger"] == 5  # the non-object line is merely corrupt
    assert {q["reason"] for q in quarantined} == {"not a valid usage event"}
    assert any("'bad-type'" in r.getMessage() for r in caplog.records)  # logged by event id
    mode = stat.S_IMODE((outbox.directory / "dead-letter" / "ledger.jsonl").stat().st_mode)
    assert mode == 0o600
    outbox.finished(_event("next"))
    assert await flusher.flush_once() == 1  # the queue moves on: nothing is retried or quarantined twice
    assert flusher.dead_lettered["ledger"] == 5


async def test_the_ledger_worker_quarantines_poison_too(tmp_path: Path, outbox: Outbox, sql_ledger: SqlLedger) -> None:
    worker = LedgerWorker(str(tmp_path / "ledger.db"), batch_size=500, min_bytes=0)
    flusher = Flusher(outbox, sql_ledger, ledger_worker=worker)
    try:
        outbox.finished(_event("before"))
        _write_poison(outbox)
        outbox.finished(_event("after"))
        assert await flusher.flush_once() == 2
        assert worker.started == 1
        assert {e.event_id for e in (await sql_ledger.events(limit=10)).events} == {"before", "after"}
        assert flusher.dead_lettered["ledger"] == 5
    finally:
        await flusher.stop()


async def test_a_record_the_database_refuses_is_isolated_and_the_rest_lands(outbox: Outbox, pg_url: str) -> None:
    ledger = await SqlLedger.open(pg_url)
    try:
        for i in range(6):
            outbox.finished(_event(f"good{i}"))
        # Valid JSON, a valid UsageEvent, but PostgreSQL refuses a NUL character in text (SQLSTATE 22021).
        bad = _event("nul-tenant")
        outbox.finished(type(bad)(**{**bad.to_dict(), "tenant_id": "a\x00b"}))
        for i in range(6, 12):
            outbox.finished(_event(f"good{i}"))
        flusher = Flusher(outbox, ledger)
        assert await flusher.flush_once() == 12
        assert {e.event_id for e in (await ledger.events(limit=50)).events} == {f"good{i}" for i in range(12)}
        (quarantined,) = _dead_letters(outbox, "ledger")
        assert quarantined["record"]["event_id"] == "nul-tenant"
        assert quarantined["reason"].startswith("the ledger refused it")
        assert flusher.consumers[0].failing_since is None  # not mistaken for an outage
    finally:
        await ledger.close()


async def test_a_dead_outbox_with_malformed_records_is_still_recovered(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    dead = "1x1x000000"
    (directory / f"{dead}.lock").touch()
    lines = [
        _start("cut").to_line(),
        b'{"t":"p"}\n',  # a prompt count without an id
        b'{"t":"s","id":null}\n',
        b'{"t":"f","e":null}\n',
        b'{"t":"f","e":' + _event("done").to_json() + b"}\n",
    ]
    (directory / segment_name(dead, 0)).write_bytes(b"".join(lines))
    survivor = Outbox(directory, fsync_interval=0)
    survivor.open()
    ledger = MemoryLedger()
    flusher = Flusher(survivor, ledger)
    await flusher.flush_once()
    await flusher.flush_once()
    assert set(ledger.rows) == {"cut", "done"} and ledger.rows["cut"].status == "gateway_lost"
    assert not (directory / segment_name(dead, 0)).exists()


async def test_a_failing_pass_is_logged_and_delivery_goes_on(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = MemoryLedger()
    flusher = Flusher(outbox, ledger, interval=0.01)
    real = Flusher._release_drained_orphans
    calls = 0

    def broken_once(self: Flusher) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in one pass")
        real(self)

    monkeypatch.setattr(Flusher, "_release_drained_orphans", broken_once)
    with caplog.at_level(logging.ERROR, logger="fleetgate.metering.flusher"):
        flusher.start()
        try:
            await wait_until(lambda: calls >= 1, timeout=30, what="a first pass")
            outbox.finished(_event("after-the-failure"))
            await wait_until(lambda: "after-the-failure" in ledger.rows, timeout=30, what="delivery after a failure")
            assert flusher.running and flusher.pass_failures == 1
        finally:
            await flusher.stop()
    assert any("delivery pass failed" in r.getMessage() for r in caplog.records)


async def test_a_sink_down_for_long_is_dead_lettered_while_the_ledger_is_current(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", segment_bytes=4096, fsync_interval=0)
    box.open()
    ledger, sink = MemoryLedger(), ListSink()
    flusher = Flusher(box, ledger, [sink], sink_max_backlog_bytes=8192)
    sink.down = True
    ids = [f"r{i}" for i in range(200)]
    for rid in ids:
        box.started(_start(rid))
        box.finished(_event(rid))
        if int(rid[1:]) % 20 == 0:
            await flusher.flush_once()
    await flusher.flush_once()
    assert set(ledger.rows) == set(ids)  # the ledger is current
    segments = list(box.directory.glob("*.log"))
    assert len(segments) <= 4, "segments the ledger has were kept for a sink that is down"
    assert flusher.backlog_bytes["list"] <= 8192
    dead = [d["record"]["event_id"] for d in _dead_letters(box, "list")]
    assert flusher.dead_lettered["list"] == len(dead) > 100
    assert {d["reason"] for d in _dead_letters(box, "list")} == {"sink_backlog"}
    sink.down = False
    flusher.consumers[1].retry_at = 0
    await flusher.flush_once()
    assert set(sink.received) | set(dead) == set(ids)  # each event reached the sink or its dead-letter file
    assert not set(sink.received) & set(dead)
    assert "ledger" not in flusher.dead_lettered
    box.close()


async def test_a_real_nats_sink_that_is_unreachable_is_bounded_too(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", segment_bytes=4096, fsync_interval=0)
    box.open()
    ledger = MemoryLedger()
    config = NatsSinkConfig(url=f"nats://127.0.0.1:{free_port()}", stream="FGTEST_DOWN", subject="fgtest.down")
    sink = NatsSink(config, connect_timeout=0.5)
    flusher = Flusher(box, ledger, [sink], sink_max_backlog_bytes=4096)
    for i in range(60):
        box.started(_start(f"r{i}"))
        box.finished(_event(f"r{i}"))
        if i % 10 == 0:
            flusher.consumers[1].retry_at = 0
            await flusher.flush_once()
    flusher.consumers[1].retry_at = 0
    await flusher.flush_once()
    assert len(ledger.rows) == 60 and flusher.consumers[1].failing_since is not None
    assert flusher.dead_lettered["nats"] > 0 and len(list(box.directory.glob("*.log"))) <= 3
    await sink.close()
    box.close()


async def test_the_ledger_is_never_dead_lettered_and_the_budget_refuses_starts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", segment_bytes=4096, fsync_interval=0, max_bytes=16384, disk_check_interval=0)
    box.open()
    ledger, sink = MemoryLedger(), ListSink()
    ledger.down = sink.down = True
    flusher = Flusher(box, ledger, [sink], sink_max_backlog_bytes=4096)
    with pytest.raises(OutboxUnavailable) as refused:
        for i in range(500):
            box.started(_start(f"r{i}"))
            box.finished(_event(f"r{i}"))
            if i % 10 == 0:
                await flusher.flush_once()
    assert refused.value.reason == "disk_budget"
    assert flusher.dead_lettered == {}  # nothing the ledger has not got is moved aside, for no consumer
    ledger.down = sink.down = False
    for consumer in flusher.consumers:
        consumer.retry_at = 0
    await flusher.flush_once()
    assert len(ledger.rows) == i  # every request that was served
    assert box.accepting
    box.close()


async def test_the_dead_letter_folder_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(tmp_path / "outbox", segment_bytes=4096, fsync_interval=0)
    box.open()
    ledger, sink = MemoryLedger(), ListSink()
    sink.down = True
    flusher = Flusher(box, ledger, [sink], sink_max_backlog_bytes=0, dead_letter_max_bytes=2048)
    with caplog.at_level(logging.ERROR, logger="fleetgate.metering.dead_letter"):
        for i in range(100):
            box.started(_start(f"r{i}"))
            box.finished(_event(f"r{i}"))
        await flusher.flush_once()
    folder = box.directory / "dead-letter"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 2048
    assert flusher.dead_letter_dropped["list"] > 0
    assert flusher.dead_lettered["list"] + flusher.dead_letter_dropped["list"] >= 80
    assert len([r for r in caplog.records if "at its bound" in r.getMessage()]) == 1
    box.close()


async def test_adopting_a_dead_outbox_waits_while_records_are_kept_in_memory(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    dead = "1x1x000001"
    (directory / f"{dead}.lock").touch()
    (directory / segment_name(dead, 0)).write_bytes(_start("cut").to_line())
    box = Outbox(directory, fsync_interval=0)
    box.open()
    box.started(_start("mine"))
    box._pending.append((b'{"t":"f","e":' + _event("mine").to_json() + b"}\n", "mine"))  # the disk refused it
    ledger = MemoryLedger()
    flusher = Flusher(box, ledger)
    await flusher.flush_once()
    assert flusher.recovered_lost == 0 and (directory / segment_name(dead, 0)).exists()
    assert box.retry_pending()
    await flusher.flush_once()
    await flusher.flush_once()
    assert flusher.recovered_lost == 1 and set(ledger.rows) == {"mine", "cut"}
    box.close()
