"""Crash safety of the money path: kill -9 the gateway mid-flight and after completion; nothing lost or doubled."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.e2e.conftest import DEMO_KEY, FLEETGATE, KEY_ENV
from tests.fakes import FakeEngine, free_port

pytestmark = pytest.mark.e2e


@dataclass
class Gateway:
    """A gateway subprocess over a fixed state dir."""

    url: str
    proc: subprocess.Popen[bytes]


class Harness:
    """Starts, kills and restarts gateways that share one state dir (database + outbox)."""

    def __init__(self, tmp: Path, engine: FakeEngine, db_url: str) -> None:
        self.tmp = tmp
        self.engine = engine
        self.db_url = db_url
        self.env = {
            **os.environ,
            "FLEETGATE_STATE_DIR": str(tmp / "state"),
            "FLEETGATE_DATABASE__URL": db_url,
            "FLEETGATE_METERING__FLUSH_INTERVAL": "0.3",
            **KEY_ENV,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.starts = 0

    async def start(self) -> Gateway:
        port = free_port()
        self.starts += 1
        log = (self.tmp / f"gw{self.starts}.log").open("wb")
        proc = subprocess.Popen(
            [*FLEETGATE, "up", "--engine", self.engine.url, "--port", str(port), "--no-self-test"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert proc.poll() is None, (self.tmp / f"gw{self.starts}.log").read_text()[-2000:]
                try:
                    async with http.get(f"{url}/readyz") as resp:
                        if resp.status == 200:
                            return Gateway(url, proc)
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        pytest.fail("gateway did not become ready")

    async def rows(self) -> dict[str, tuple[str, int, int, str]]:
        query = "SELECT event_id, status, prompt_tokens, completion_tokens, usage_source FROM usage_events"
        if self.db_url.startswith("sqlite"):
            path = Path(self.db_url.removeprefix("sqlite:///"))
            if not path.exists():
                return {}
            with sqlite3.connect(path) as conn:
                try:
                    found = conn.execute(query).fetchall()
                except sqlite3.OperationalError:
                    return {}
        else:
            conn = await asyncpg.connect(self.db_url)
            try:
                found = await conn.fetch(query)
            except asyncpg.UndefinedTableError:
                return {}
            finally:
                await conn.close()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in found}

    async def wait_rows(self, ids: set[str], timeout: float = 30) -> dict[str, tuple[str, int, int, str]]:
        for _ in range(int(timeout / 0.2)):
            rows = await self.rows()
            if ids <= set(rows):
                return rows
            await asyncio.sleep(0.2)
        return await self.rows()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def harness(tmp_path: Path, db_url: str) -> AsyncIterator[Harness]:
    """Gateways over one state dir, their ledger in SQLite (the default) or in PostgreSQL (db_url runs both)."""
    engine = FakeEngine(model="smollm2", chunks_from_max_tokens=True, delay=0.05)
    await engine.start()
    h = Harness(tmp_path, engine, db_url)
    try:
        yield h
    finally:
        h.stop_all()
        await engine.stop()


async def _stream(http: aiohttp.ClientSession, url: str, max_tokens: int) -> tuple[str | None, bool]:
    """One streamed request; returns (request id, whether the client saw it complete)."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    rid: str | None = None
    data = b""
    try:
        async with http.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {DEMO_KEY}"}
        ) as resp:
            rid = resp.headers.get("x-request-id")
            async for chunk in resp.content.iter_any():
                data += chunk
    except (TimeoutError, aiohttp.ClientError):
        pass  # cut off by the kill: the id from the headers (if they came) is what we check in the ledger
    return rid, b"data: [DONE]" in data


async def test_kill_mid_flight_and_after_completion(harness: Harness) -> None:
    rng = random.Random(7)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        # Phase 1: 50 concurrent streams of 2-40 chunks (0.1-2 s); kill -9 at 1 s.
        first = await harness.start()
        tasks = [asyncio.create_task(_stream(http, first.url, rng.randint(2, 40))) for _ in range(50)]
        await asyncio.sleep(1.0)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        results = await asyncio.gather(*tasks)
        # A request cut before its headers reached the client has no id on the client side (see the end).
        completed = {rid for rid, done in results if rid and done}
        cut = {rid for rid, done in results if rid and not done}
        assert completed and cut, "the kill should land while some streams run and after others finished"

        # Phase 2: restart; 50 streams that all complete; kill -9 right after (before a flush can run).
        second = await harness.start()
        results2 = await asyncio.gather(*(_stream(http, second.url, rng.randint(2, 8)) for _ in range(50)))
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(timeout=10)
        completed2 = {rid for rid, done in results2 if rid and done}
        assert len(completed2) == 50

        # Phase 3: a third start adopts both dead outboxes, and serves again.
        third = await harness.start()
        expected = completed | cut | completed2
        rows = await harness.wait_rows(expected)
        served = harness.engine.served
        after, done = await _stream(http, third.url, 3)
        assert after is not None and done
    missing = expected - set(rows)
    assert not missing, f"{len(missing)} requests missing from the ledger"
    # The kill can also land after a request was routed (its start record written) and before its response
    # headers reached the client: the client knows no id, the ledger holds it as lost. Only such rows may be extra.
    extra = set(rows) - expected
    assert all(rows[rid][0] == "gateway_lost" and rows[rid][2] == 0 for rid in extra), [rows[rid] for rid in extra]
    for rid in completed | completed2:
        assert rows[rid][0] == "ok", (rid, rows[rid])
        assert rows[rid][3] == "engine" and rows[rid][2] > 0
    for rid in cut:
        status, prompt, completion, _ = rows[rid]
        assert status == "gateway_lost", (rid, rows[rid])
        assert prompt > 0 and completion == 0
    # Exactly once: the primary key would reject a duplicate row, and every request the engine served has its row.
    assert len(expected) <= served <= len(rows)
