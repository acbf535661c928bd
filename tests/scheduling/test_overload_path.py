"""Overload through the real gateway: a noisy tenant at 10x its share cannot shed a quiet tenant's requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway

BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}


async def _key(http: aiohttp.ClientSession, gw: RunningGateway, name: str, **spec: Any) -> dict[str, str]:
    await http.put(f"{gw.url}/admin/tenants/{name}", json=spec, headers=gw.admin_headers)
    resp = await http.post(f"{gw.url}/admin/tenants/{name}/keys", json={}, headers=gw.admin_headers)
    return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def _one(http: aiohttp.ClientSession, gw: RunningGateway, headers: dict[str, str]) -> tuple[int, str | None]:
    async with http.post(f"{gw.url}/v1/chat/completions", json=BODY, headers=headers) as resp:
        body = await resp.read()
        if resp.status == 200:
            assert body.endswith(b"data: [DONE]\n\n")
        return resp.status, resp.headers.get("retry-after")


async def test_noisy_tenant_cannot_starve_quiet_one() -> None:
    engine = FakeEngine(model="smollm2", delay=0.02)  # 4 chunks x 20 ms per request
    await engine.start()
    admission = {
        "max_in_flight_per_replica": 2,
        "max_queue": 15,
        "queue_timeout": {"interactive": 2.0, "standard": 2.0, "batch": 2.0},
    }
    try:
        async with (
            running_gateway([engine.url], sections={"admission": admission}) as gw,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        ):
            noisy = await _key(http, gw, "noisy")
            quiet = await _key(http, gw, "quiet")

            async def flood() -> list[tuple[int, str | None]]:
                return await asyncio.gather(*(_one(http, gw, noisy) for _ in range(60)))

            async def trickle() -> list[tuple[int, str | None]]:
                results = []
                for _ in range(6):
                    await asyncio.sleep(0.1)
                    results.append(await _one(http, gw, quiet))
                return results

            noisy_results, quiet_results = await asyncio.gather(flood(), trickle())
    finally:
        await engine.stop()
    assert [status for status, _ in quiet_results] == [200] * 6  # no quiet request is shed
    statuses = Counter(status for status, _ in noisy_results)
    assert set(statuses) <= {200, 429, 503}, statuses  # refused on purpose, never a 500
    assert statuses[200] > 0 and statuses[429] + statuses[503] > 0, statuses
    assert all(retry is not None and int(retry) >= 1 for status, retry in noisy_results if status != 200)
