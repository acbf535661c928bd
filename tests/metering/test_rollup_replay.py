"""After a crash replay the daily roll-ups still equal the sum of the events, on SQLite and PostgreSQL.

A real gateway process (in front of a fake engine) is SIGKILLed mid-stream after some of its events reached the
ledger; its checkpoints are then removed, as if it had died between a ledger commit and the checkpoint write, so
the next gateway adopts the outbox and delivers every record again. Each event must be in the ledger once, and
`usage_daily` must equal the events summed per day, tenant, model, adapter and GPU type (tokens of outcomes that
are never billed, such as gateway_lost, are left out of the roll-ups by design: docs/billing.md).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import func, select

from fleetgate.db.engine import make_engine
from fleetgate.db.schema import usage_daily, usage_events
from fleetgate.metering.events import UNBILLED_STATUSES
from fleetgate.metering.ledger import STATUS_COLUMNS, utc_day
from tests.e2e.test_metering_crash import Harness, _stream
from tests.fakes import FakeEngine

KEYS = ("day", "tenant_id", "model", "adapter", "gpu_type")


async def _rows(url: str) -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], dict[str, Any]]]:
    """(roll-ups, events summed the same way), keyed by (day, tenant, model, adapter, gpu_type)."""
    engine = make_engine(url)
    c = usage_events.c
    try:
        async with engine.connect() as conn:
            daily = (await conn.execute(select(usage_daily))).all()
            events = (
                await conn.execute(
                    select(
                        c.tenant_id,
                        c.model,
                        c.adapter,
                        c.gpu_type,
                        c.started_at,
                        c.ended_at,
                        c.prompt_tokens,
                        c.cached_tokens,
                        c.completion_tokens,
                        c.status,
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    rolled = {}
    for r in daily:
        row = dict(r._mapping)
        rolled[tuple(row[k] or "" for k in KEYS)] = {
            k: (round(float(v), 6) if k == "busy_seconds" else v) for k, v in row.items() if k not in KEYS
        }
    summed: dict[tuple[Any, ...], dict[str, Any]] = {}
    for tenant, model, adapter, gpu, started, ended, prompt, cached, completion, status in events:
        key = (utc_day(started), tenant, model, adapter or "", gpu or "")
        acc = summed.setdefault(key, _zero())
        acc["requests"] += 1
        if status not in UNBILLED_STATUSES:  # the gateway's own failures keep their tokens but are never billed
            acc["prompt_tokens"] += prompt
            acc["cached_tokens"] += cached
            acc["completion_tokens"] += completion
        acc["busy_seconds"] += max(ended - started, 0.0)
        acc[STATUS_COLUMNS.get(status, "errors")] += 1
    for acc in summed.values():
        acc["busy_seconds"] = round(acc["busy_seconds"], 6)
    return rolled, summed


def _zero() -> dict[str, Any]:
    return {
        "requests": 0,
        "prompt_tokens": 0,
        "cached_tokens": 0,
        "completion_tokens": 0,
        "busy_seconds": 0.0,
        **dict.fromkeys(STATUS_COLUMNS.values(), 0),  # ("errors" once, though two statuses count there)
    }


def _started_ids(outbox: Path) -> set[str]:
    ids = set()
    for segment in outbox.glob("*.log"):
        for line in segment.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line
            if record.get("t") == "s":
                ids.add(record["id"])
    return ids


async def _event_count(url: str) -> int:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(usage_events))).scalar_one())
    except Exception:  # the gateway may not have created the tables yet
        return 0
    finally:
        await engine.dispose()


async def _until(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_rollups_equal_events_after_a_crash_replay(db_url: str, tmp_path: Path) -> None:
    engine = FakeEngine(model="smollm2", chunks_from_max_tokens=True, delay=0.05)
    await engine.start()
    harness = Harness(tmp_path, engine, db_url)
    outbox = tmp_path / "state" / "outbox"
    rng = random.Random(11)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            first = await harness.start()
            short = [asyncio.create_task(_stream(http, first.url, rng.randint(1, 3))) for _ in range(10)]
            await asyncio.gather(*short)
            long = [asyncio.create_task(_stream(http, first.url, rng.randint(30, 60))) for _ in range(10)]

            async def some_delivered() -> bool:
                return await _event_count(db_url) >= 5

            await _until(some_delivered, "the first events in the ledger")
            first.proc.send_signal(signal.SIGKILL)  # the long streams are mid-flight
            first.proc.wait(timeout=10)
            await asyncio.gather(*long)
            started = _started_ids(outbox)
            delivered = await _event_count(db_url)
            assert 5 <= delivered < len(started) == 20
            for ckpt in outbox.glob("*.ckpt"):  # died before recording what it had delivered
                ckpt.unlink()

            await harness.start()  # adopts the outbox and delivers all of it again

            async def all_there() -> bool:
                return await _event_count(db_url) >= len(started)

            await _until(all_there, f"{len(started)} events in the ledger")
        rolled, summed = await _rows(db_url)
        assert await _event_count(db_url) == len(started)  # each once, though delivered twice
        assert rolled == summed
        assert sum(r["requests"] for r in rolled.values()) == 20 and sum(r["lost"] for r in rolled.values()) >= 1
    finally:
        harness.stop_all()
        await engine.stop()
