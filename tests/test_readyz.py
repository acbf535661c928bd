"""/readyz names the dependency that is down, and answers 503 only when the gateway cannot serve at all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from fleetgate.metering.outbox import Outbox
from tests.blackhole_proxy import BlackHoleProxy
from tests.fakes import FakeEngine, free_port
from tests.gateway_harness import RunningGateway, running_gateway
from tests.waiting import wait_until

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# Short database timeouts, so a black-holed store answers within a test's patience.
FAST_DB = {"connect_timeout": 1.0, "statement_timeout": 1.0, "pool_timeout": 1.0}


async def _readyz(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(f"{gw.url}/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def _chat(gw: RunningGateway) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(f"{gw.url}/v1/chat/completions", json=CHAT, headers=gw.headers) as resp,
    ):
        await resp.read()
        return resp.status


def _proxy_for(url: str) -> BlackHoleProxy:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return BlackHoleProxy(parts.hostname, parts.port)


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[tuple[BlackHoleProxy, str]]:
    """A black-hole-able proxy in front of a fresh PostgreSQL database, and the database's URL through it."""
    proxy = _proxy_for(pg_url)
    await proxy.up()
    parts = urlsplit(pg_url)
    yield proxy, pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    await proxy.close()


async def test_all_ok_is_ready_and_lists_every_check(engine: FakeEngine) -> None:
    async with running_gateway([engine.url]) as gw:
        status, body = await _readyz(gw)
    assert status == 200 and body["status"] == "ready", body
    assert body["healthy_replicas"] == ["engine-0"]
    assert set(body["checks"]) == {"engines", "tenant_store", "ledger", "outbox"}  # no Redis, no sink configured
    assert all(check["ok"] for check in body["checks"].values())


async def test_no_healthy_engine_is_unready_and_says_why(engine: FakeEngine) -> None:
    async with running_gateway([engine.url]) as gw:
        await engine.stop()
        await wait_until(lambda: not gw.gateway.registry.all()[0].healthy, what="the engine to be marked down")
        status, body = await _readyz(gw)
    assert status == 503 and body["status"] == "unready"
    engines = body["checks"]["engines"]
    assert not engines["ok"] and "engine-0" in engines["unhealthy"]


async def test_a_black_holed_tenant_store_is_named(engine: FakeEngine, pg_proxy: tuple[BlackHoleProxy, str]) -> None:
    proxy, url = pg_proxy
    async with running_gateway([engine.url], sections={"database": {"url": url, **FAST_DB}}) as gw:
        proxy.blackhole()
        status, body = await _readyz(gw)  # no key was ever used: nothing could be served
        assert status == 503 and body["status"] == "unready", body
        store = body["checks"]["tenant_store"]
        assert not store["ok"] and "no key is cached" in store["detail"]
        assert not body["checks"]["ledger"]["ok"]  # the same database

        proxy.restore(cut_held=True)
        await wait_until(lambda: _ready(gw), what="the store to answer again")
        assert await _chat(gw) == 200  # the demo key is cached now
        proxy.blackhole()
        await wait_until(lambda: _store_down(gw), what="/readyz to see the store down")  # answers live 1 s
        status, body = await _readyz(gw)
        assert status == 200 and body["status"] == "degraded", body  # cached keys keep serving
        assert "cached keys keep working" in body["checks"]["tenant_store"]["detail"]
        proxy.restore(cut_held=True)


async def _ready(gw: RunningGateway) -> bool:
    status, body = await _readyz(gw)
    return status == 200 and body["checks"]["tenant_store"]["ok"]


async def _store_down(gw: RunningGateway) -> bool:
    _, body = await _readyz(gw)
    return not body["checks"]["tenant_store"]["ok"]


async def test_a_separate_ledger_database_down_is_degraded_not_unready(engine: FakeEngine) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/ledger"
    async with running_gateway([engine.url], metering={"ledger_url": dead}, sections={"database": FAST_DB}) as gw:
        status, body = await _readyz(gw)
    assert status == 200 and body["status"] == "degraded", body
    ledger = body["checks"]["ledger"]
    assert not ledger["ok"] and "wait in the outbox" in ledger["detail"]


@pytest.mark.parametrize(("policy", "expected"), [("fail_open", 200), ("fail_closed", 503)])
async def test_redis_down_is_named_and_unready_only_under_fail_closed(
    engine: FakeEngine, redis_url: str, policy: str, expected: int
) -> None:
    proxy = _proxy_for(redis_url)
    await proxy.up()
    limits = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{proxy.port}/0", "on_redis_error": policy}
    try:
        async with running_gateway([engine.url], sections={"limits": limits}) as gw:
            status, body = await _readyz(gw)
            assert status == 200 and body["checks"]["redis"]["ok"], body
            proxy.blackhole()
            await wait_until(lambda: _redis_down(gw), what="/readyz to see Redis down")
            status, body = await _readyz(gw)
            assert status == expected and not body["checks"]["redis"]["ok"], body
            assert policy in body["checks"]["redis"]["detail"]
            proxy.restore(cut_held=True)
    finally:
        await proxy.close()


async def _redis_down(gw: RunningGateway) -> bool:
    _, body = await _readyz(gw)
    return not body["checks"]["redis"]["ok"]


async def test_an_outbox_that_refuses_makes_the_gateway_unready(
    engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway([engine.url]) as gw:
        monkeypatch.setattr(Outbox, "refusal_reason", property(lambda self: "disk_budget"))
        status, body = await _readyz(gw)
        monkeypatch.undo()
    assert status == 503 and body["status"] == "unready"
    assert body["checks"]["outbox"] == {"ok": False, "detail": "refusing new requests (disk_budget)"}


async def test_a_sink_that_is_down_is_degraded(engine: FakeEngine) -> None:
    nats = {"url": f"nats://127.0.0.1:{free_port()}", "stream": "FGTEST_READYZ", "subject": "fgtest.readyz"}
    async with running_gateway([engine.url], metering={"nats": nats}) as gw:
        assert await _chat(gw) == 200  # an event the sink must take

        async def nats_failing() -> bool:
            _, body = await _readyz(gw)
            return "nats" in body["checks"] and not body["checks"]["nats"]["ok"]

        await wait_until(nats_failing, what="the sink's failure to show")
        status, body = await _readyz(gw)
    assert status == 200 and body["status"] == "degraded"
    assert "wait in the outbox" in body["checks"]["nats"]["detail"]
