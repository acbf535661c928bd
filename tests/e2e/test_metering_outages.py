"""A ledger (PostgreSQL) or sink (NATS) outage never stops serving, and the events land once it is back."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import nats
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.servers import PostgresServer
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


async def _requests(gw: RunningGateway, n: int, stream: bool = False) -> list[str]:
    ids = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for _ in range(n):
            async with http.post(
                f"{gw.url}/v1/chat/completions", json={**BODY, "stream": stream}, headers=gw.headers
            ) as resp:
                await resp.read()
                assert resp.status == 200  # serving continues whatever the ledger or sink does
                ids.append(resp.headers["x-request-id"])
    return ids


async def _pg_ids(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        try:
            rows = await conn.fetch("SELECT event_id FROM usage_events")
        except asyncpg.UndefinedTableError:
            return set()
        return {r["event_id"] for r in rows}
    finally:
        await conn.close()


async def _eventually(check: Any, timeout: float = 25.0) -> bool:
    try:
        await wait_until(check, timeout=timeout, interval=0.25)
    except TimeoutError:
        return False
    return True


async def _failed_delivery(gw: RunningGateway, consumer: str) -> None:
    """Wait until the flusher has tried and failed to deliver to `consumer` since now (the outage is seen)."""
    (state,) = [c for c in gw.gateway.flusher.consumers if c.name == consumer]
    seen = state.failures
    await wait_until(lambda: state.failures > seen, timeout=30, what=f"a failed delivery to {consumer}")


async def test_postgres_ledger_outage(engine: FakeEngine, pg_url: str, postgres_server: PostgresServer) -> None:
    proxy = TcpProxy("127.0.0.1", postgres_server.port)
    await proxy.up()
    direct = pg_url.replace("postgresql://", "postgres://")
    via_proxy = pg_url.replace(f"127.0.0.1:{postgres_server.port}", f"127.0.0.1:{proxy.port}")
    try:
        async with running_gateway([engine.url], metering={"ledger_url": via_proxy}) as gw:
            before = await _requests(gw, 3)
            assert await _eventually(lambda: _has(direct, before)), "events did not reach the ledger"
            await proxy.down()
            during = await _requests(gw, 5, stream=True)
            await _failed_delivery(gw, "ledger")
            assert not (set(during) & await _pg_ids(direct))  # really down: nothing got through
            await proxy.up()
            assert await _eventually(lambda: _has(direct, during)), "events did not land after the outage"
            assert set(before) | set(during) <= await _pg_ids(direct)
    finally:
        await proxy.down()


async def _has(dsn: str, ids: list[str]) -> bool:
    return set(ids) <= await _pg_ids(dsn)


async def test_nats_sink_outage(engine: FakeEngine, nats_url: str) -> None:
    target = urlsplit(nats_url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.up()
    name = f"FGTEST_{uuid.uuid4().hex[:8].upper()}"
    subject = f"fgtest.{name.lower()}"
    nats_cfg = {"url": f"nats://127.0.0.1:{proxy.port}", "stream": name, "subject": subject}
    admin = await nats.connect(nats_url)
    js = admin.jetstream()
    try:
        async with running_gateway([engine.url], metering={"nats": nats_cfg}) as gw:
            await proxy.down()
            ids = await _requests(gw, 5)
            await _failed_delivery(gw, "nats")
            await proxy.up()

            async def arrived() -> bool:
                try:
                    info = await js.stream_info(name)
                except nats.js.errors.NotFoundError:
                    return False
                return info.state.messages >= len(ids)

            assert await _eventually(arrived), "events did not reach NATS after the outage"
            sub = await js.pull_subscribe(subject, durable=None, stream=name)
            msgs = await sub.fetch(len(ids) + 5, timeout=2)
            got = [m.headers["Nats-Msg-Id"] for m in msgs if m.headers]
            assert sorted(got) == sorted(ids)  # each exactly once
    finally:
        await proxy.down()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
        await admin.close()
