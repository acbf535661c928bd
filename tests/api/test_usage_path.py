"""Usage through the real gateway: events flow capture -> outbox -> ledger -> /v1/usage and /admin/usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.gateway_harness import RunningGateway, gateway_with_fake_engine


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    async with gateway_with_fake_engine() as running:
        yield running


async def _key(http: aiohttp.ClientSession, gw: RunningGateway, name: str) -> dict[str, str]:
    await http.put(f"{gw.url}/admin/tenants/{name}", json={}, headers=gw.admin_headers)
    resp = await http.post(f"{gw.url}/admin/tenants/{name}/keys", json={}, headers=gw.admin_headers)
    return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def _usage(http: aiohttp.ClientSession, gw: RunningGateway, headers: dict[str, str]) -> Any:
    async with http.get(f"{gw.url}/v1/usage", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_tenant_reads_only_its_own_usage(gw: RunningGateway) -> None:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        a, b = await _key(http, gw, "alpha"), await _key(http, gw, "beta")
        for stream in (False, True):
            async with http.post(f"{gw.url}/v1/chat/completions", json={**body, "stream": stream}, headers=a) as r:
                assert r.status == 200
                await r.read()
        for _ in range(40):
            mine = await _usage(http, gw, a)
            if mine["totals"]["requests"] == 2:
                break
            await asyncio.sleep(0.1)
        # The fake engine reports 7 prompt tokens (3 cached) and 4 completion tokens per request.
        assert mine["tenant"] == "alpha"
        assert (mine["totals"]["prompt_tokens"], mine["totals"]["cached_tokens"]) == (14, 6)
        assert mine["totals"]["output_tokens"] == 8
        assert "cost_micros" not in str(mine) and "margin" not in str(mine)
        theirs = await _usage(http, gw, b)
        assert theirs["tenant"] == "beta" and theirs["totals"]["requests"] == 0
        async with http.get(f"{gw.url}/v1/usage") as resp:
            assert resp.status == 401
        async with http.get(f"{gw.url}/admin/usage", headers=gw.admin_headers) as resp:
            assert resp.status == 200
            report = await resp.json()
        assert {line["tenant"] for line in report["lines"]} == {"alpha"}
