"""Black-holed PostgreSQL and Redis (TCP accepted, nothing answered) in front of a real gateway process.

PostgreSQL: cached keys keep working, a new key gets a prompt 503, /readyz names the store, and once it is back
new keys and revocation work again and every served request reaches the ledger. Redis under fail_open: a tenant
over budget stays refused during the outage, and a max-concurrency-1 tenant whose settle was lost to the outage
is served again right after Redis returns, with no lease left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml

from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from tests.blackhole_proxy import BlackHoleProxy
from tests.e2e.conftest import FLEETGATE
from tests.fakes import FakeEngine, free_port
from tests.keys import ADMIN_KEY, KEY_ENV
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
FAST_DB = {"connect_timeout": 1.0, "statement_timeout": 1.0, "pool_timeout": 1.0}


@asynccontextmanager
async def _gateway(tmp: Path, engine: FakeEngine, config: dict[str, Any]) -> AsyncIterator[str]:
    """`fleetgate up --engine` as its own process with `config`; stopped by PID, killed if it will not stop."""
    config = {"metering": {"outbox_dir": str(tmp / "outbox"), "flush_interval": 0.1}, **config}
    config.setdefault("tenancy", {"poll_interval": 0.2})
    (tmp / "fleetgate.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, **KEY_ENV, "FLEETGATE_CONFIG": str(tmp / "fleetgate.yaml"), "FLEETGATE_RUN_DIR": str(tmp)}
    port, log = free_port(), tmp / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*FLEETGATE, "up", "--engine", engine.url, "--port", str(port), "--no-self-test"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the gateway exited: {log.read_text()[-3000:]}")
            return (await _get(url, "/readyz"))[0] == 200

        await wait_until(ready, timeout=90, what=f"the gateway to be ready ({log})")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _get(url: str, path: str) -> tuple[int, Any]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(url + path) as resp,
        ):
            return resp.status, await resp.json(content_type=None)
    except aiohttp.ClientConnectionError:
        return 0, None


async def _admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.request(method, f"{url}/admin{path}", json=body if body is not None else {}, headers=ADMIN) as resp,
    ):
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def _chat(url: str, key: str, **extra: Any) -> tuple[int, Any, str]:
    """(status, the JSON body or the stream's text, x-request-id); the 30 s client timeout is the "hung" bound."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(
            f"{url}/v1/chat/completions", json={**CHAT, **extra}, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        raw = await resp.read()
        body: Any = raw.decode() if extra.get("stream") and resp.status == 200 else await resp.json(content_type=None)
        return resp.status, body, resp.headers.get("x-request-id", "")


async def _new_key(url: str, tenant: str) -> tuple[str, str]:
    created = await _admin(url, "POST", f"/tenants/{tenant}/keys")
    return created["key"], created["id"]


def _proxy_for(url: str) -> BlackHoleProxy:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return BlackHoleProxy(parts.hostname, parts.port)


def _through(url: str, proxy: BlackHoleProxy) -> str:
    parts = urlsplit(url)
    return url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")


async def _ledger_ids(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {row["event_id"] for row in await conn.fetch("SELECT event_id FROM usage_events")}
    finally:
        await conn.close()


async def test_black_holed_postgres(tmp_path: Path, engine: FakeEngine, pg_url: str) -> None:
    proxy = _proxy_for(pg_url)
    await proxy.up()
    try:
        # Tenant and keys exist before the gateway starts: a tenancy change seen later would empty its key cache.
        store = await TenantStore.open(pg_url)
        try:
            await store.upsert_tenant(TenantSpec(external_id="acme"))
            (cached, _), (fresh, _), (doomed, doomed_info) = [await store.create_key("acme") for _ in range(3)]
        finally:
            await store.close()
        async with _gateway(tmp_path, engine, {"database": {"url": _through(pg_url, proxy), **FAST_DB}}) as url:
            served = [(await _chat(url, key))[2] for key in (cached, doomed)]  # both keys are cached now

            proxy.blackhole()
            for stream in (False, True):
                status, body, rid = await _chat(url, cached, stream=stream)
                assert status == 200, body  # a cached key never needs the store
                served.append(rid)
            status, body, _ = await _chat(url, fresh)  # a cache miss: answered within the timeouts, not hung
            assert status == 503, body
            assert set(body["error"]) == {"message", "type", "param", "code"}
            assert body["error"]["code"] == "upstream_unavailable" and "tenant store" in body["error"]["message"]

            async def store_named() -> bool:
                status, body = await _get(url, "/readyz")
                return status == 200 and not body["checks"]["tenant_store"]["ok"]

            await wait_until(store_named, what="/readyz to name the tenant store")  # degraded: keys are cached
            status, body = await _get(url, "/readyz")
            assert "cached keys keep working" in body["checks"]["tenant_store"]["detail"]
            assert not body["checks"]["ledger"]["ok"]

            proxy.restore(cut_held=True)

            async def fresh_works() -> bool:
                return (await _chat(url, fresh))[0] == 200

            await wait_until(fresh_works, what="a new key to work once the store is back")
            await _admin(url, "POST", f"/keys/{doomed_info.id}/revoke")

            async def revoked() -> bool:
                return (await _chat(url, doomed))[0] == 401

            await wait_until(revoked, what="the revoked key to stop working")

            async def store_ok() -> bool:
                status, body = await _get(url, "/readyz")
                return status == 200 and bool(body["checks"]["tenant_store"]["ok"])

            await wait_until(store_ok, what="/readyz to see the store back")  # a probe's answer lives 1 s

            async def landed() -> bool:
                return set(served) <= await _ledger_ids(pg_url)

            await wait_until(landed, what="requests served during the outage to reach the ledger")
    finally:
        await proxy.close()


async def _tenant_id(url: str, name: str) -> str:
    return str((await _admin(url, "GET", f"/tenants/{name}"))["id"])


async def test_black_holed_redis_under_fail_open(tmp_path: Path, engine: FakeEngine, redis_url: str) -> None:
    proxy = _proxy_for(redis_url)
    await proxy.up()
    redis = aioredis.Redis.from_url(redis_url)
    config = {
        "database": {"url": f"sqlite:///{tmp_path / 'fleetgate.db'}"},
        "limits": {"backend": "redis", "redis_url": _through(redis_url, proxy), "on_redis_error": "fail_open"},
        # 100 micro-units per token: a request costs about a thousand, so a budget of 2000 is spent in two.
        "prices": {"models": {"smollm2": {"input": 100.0, "cached_input": 100.0, "output": 100.0}}},
    }
    try:
        async with _gateway(tmp_path, engine, config) as url:
            await _admin(url, "PUT", "/tenants/capped", {"budget": 0.002})
            await _admin(url, "PUT", "/tenants/single", {"max_concurrency": 1, "rpm": 1000})
            capped, _ = await _new_key(url, "capped")
            single, _ = await _new_key(url, "single")
            statuses = [(await _chat(url, capped))[0] for _ in range(5)]
            assert statuses[0] == 200 and 429 in statuses, statuses  # over budget while Redis decides

            engine.delay = 0.3  # a stream long enough to outlive the outage's start
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                headers = {"Authorization": f"Bearer {single}"}
                async with http.post(
                    f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
                ) as stream:
                    assert stream.status == 200
                    await stream.content.readuntil(b"\n\n")  # its slot is taken in Redis
                    proxy.blackhole()
                    text = (await stream.read()).decode()
            assert text.rstrip().endswith("data: [DONE]")
            engine.delay = 0.0

            async def settle_lost() -> bool:
                _, body = await _get(url, "/readyz")
                return bool(body["checks"]["redis"]["settle_failures"] >= 1)

            await wait_until(settle_lost, what="the stream's settle to fail against the black hole")
            status, body, _ = await _chat(url, capped)
            assert status == 429 and "budget" in body["error"]["message"], body  # still refused in-process
            assert (await _chat(url, single))[0] == 200  # its finished stream holds no slot here
            status, body = await _get(url, "/readyz")
            assert (
                status == 200 and not body["checks"]["redis"]["ok"] and "fail_open" in body["checks"]["redis"]["detail"]
            )

            proxy.restore(cut_held=True)  # nothing held is delivered: what the gateway owes it must pay itself
            seconds, micros = await redis.time()
            restored_at = seconds + micros / 1e6
            tenant = await _tenant_id(url, "single")
            rpm_key = f"fleetgate:lim:{{{tenant}}}:rpm"

            async def decided_by_redis() -> bool:
                status, body, _ = await _chat(url, single)
                assert status == 200, body  # never refused: the lost settle's slot is freed first
                stamp = await redis.hget(rpm_key, "ts")
                return stamp is not None and float(stamp) >= restored_at

            await wait_until(decided_by_redis, what="a request of the tenant to be decided by Redis again")
            await wait_until(
                lambda: _no_slots(redis, f"fleetgate:lim:{{{tenant}}}:conc"), what="every lease to be settled"
            )

            async def nothing_owed() -> bool:
                _, body = await _get(url, "/readyz")
                redis_check = body["checks"]["redis"]
                return bool(redis_check["ok"] and redis_check["settles_pending"] == 0)

            await wait_until(nothing_owed, what="the outage's backlog to be paid")
            status, body, _ = await _chat(url, capped)
            assert status == 429, body  # and the budget holds on Redis after the outage
    finally:
        await proxy.close()
        await redis.aclose()


async def _no_slots(redis: aioredis.Redis, key: str) -> bool:
    return int(await redis.zcard(key)) == 0
