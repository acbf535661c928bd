"""The I/O log on the real request path: opt-in per tenant, redacted before storage, readable only by its tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.gateway_harness import RunningGateway, gateway_with_fake_engine
from tests.waiting import wait_until


@pytest.fixture
async def gw(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with gateway_with_fake_engine(sections={"iolog": {"url": f"sqlite:///{tmp_path / 'io.db'}"}}) as running:
        yield running


async def _tenant(http: aiohttp.ClientSession, gw: RunningGateway, name: str, **spec: Any) -> dict[str, str]:
    await http.put(f"{gw.url}/admin/tenants/{name}", json=spec, headers=gw.admin_headers)
    resp = await http.post(f"{gw.url}/admin/tenants/{name}/keys", json={}, headers=gw.admin_headers)
    return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def test_opted_in_tenant_is_logged_redacted_and_private(gw: RunningGateway) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        logged = await _tenant(http, gw, "logged", io_log=True, io_log_retention_days=1)
        quiet = await _tenant(http, gw, "quiet")
        secret = "mail me at jane.doe@example.com"
        body = {"model": "smollm2", "messages": [{"role": "user", "content": secret}], "stream": True}
        ids = {}
        for name, headers in (("logged", logged), ("quiet", quiet)):
            async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as resp:
                assert resp.status == 200
                await resp.read()
                ids[name] = resp.headers["x-request-id"]

        async def written() -> bool:  # the writer is asynchronous by design
            return bool((await (await http.get(f"{gw.url}/v1/logs", headers=logged)).json())["data"])

        await wait_until(written, what="the I/O log writer to store the record")
        page = await (await http.get(f"{gw.url}/v1/logs", headers=logged)).json()
        assert [r["request_id"] for r in page["data"]] == [ids["logged"]]
        record = page["data"][0]
        assert "jane.doe@example.com" not in str(record) and "t0 " in str(record["response_body"])
        assert (await (await http.get(f"{gw.url}/v1/logs", headers=quiet)).json())["data"] == []  # not opted in
        resp = await http.get(f"{gw.url}/v1/logs/{ids['logged']}", headers=quiet)
        assert resp.status == 404  # another tenant's record does not exist for you
