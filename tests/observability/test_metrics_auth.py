"""Everything that names tenants needs credentials: /metrics (metrics token or admin key, as Prometheus sends them)
and the admin OpenAPI document; failures from one address are limited without touching the tenant store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.keys import ADMIN_KEY, DEMO_KEY

METRICS_TOKEN = "prometheus-scrape-token-0001"


@pytest.fixture
async def gw(engine: FakeEngine) -> AsyncIterator[RunningGateway]:
    async with running_gateway([engine.url], sections={"observability": {"metrics_token": METRICS_TOKEN}}) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _error(resp: aiohttp.ClientResponse) -> dict[str, object]:
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def test_metrics_need_the_metrics_token_or_the_admin_key(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with http.post(f"{gw.url}/v1/chat/completions", json=chat, headers=_bearer(DEMO_KEY)) as resp:
        assert resp.status == 200
    for headers in ({}, _bearer("wrong-token-000000000"), _bearer(DEMO_KEY), {"Authorization": METRICS_TOKEN}):
        async with http.get(f"{gw.url}/metrics", headers=headers) as resp:
            assert resp.status == 401
            error = await _error(resp)
            assert error["code"] == "invalid_api_key" and "metrics_token" in str(error["message"])
            assert "demo" not in await resp.text()  # no tenant name in a refusal
    for token in (METRICS_TOKEN, ADMIN_KEY):
        async with http.get(f"{gw.url}/metrics", headers=_bearer(token)) as resp:
            assert resp.status == 200 and resp.headers["content-type"].startswith("text/plain")
            assert 'tenant="demo"' in await resp.text()


async def test_without_a_metrics_token_the_admin_key_reads_metrics(
    engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    async with running_gateway([engine.url]) as gw:
        async with http.get(f"{gw.url}/metrics", headers=_bearer(METRICS_TOKEN)) as resp:
            assert resp.status == 401
        async with http.get(f"{gw.url}/metrics", headers=gw.admin_headers) as resp:
            assert resp.status == 200
    async with (
        running_gateway([engine.url], admin_api_key=None) as gw,
        http.get(f"{gw.url}/metrics", headers=_bearer(ADMIN_KEY)) as resp,
    ):
        assert resp.status == 401 and "set observability.metrics_token" in str((await _error(resp))["message"])


async def test_the_admin_openapi_document_needs_the_admin_key(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    for path in ("/admin/openapi.json", "/admin/docs", "/admin/redoc", "/admin/tenants", "/admin/no-such-route"):
        for headers in ({}, _bearer(DEMO_KEY), _bearer(METRICS_TOKEN)):
            async with http.get(f"{gw.url}{path}", headers=headers) as resp:
                assert resp.status == 401, path
                assert (await _error(resp))["type"] == "authentication_error"
    async with http.get(f"{gw.url}/admin/openapi.json", headers=gw.admin_headers) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["info"]["title"] == "fleetgate admin API"
    assert "HTTPBearer" in doc["components"]["securitySchemes"]  # the document says how to authenticate


async def test_failed_keys_from_one_address_get_429_with_retry_after(
    gw: RunningGateway, http: aiohttp.ClientSession
) -> None:
    store_lookups = 0
    lookup = gw.gateway.store.lookup

    async def counting_lookup(key_hash: str) -> object:
        nonlocal store_lookups
        store_lookups += 1
        return await lookup(key_hash)

    gw.gateway.store.lookup = counting_lookup  # type: ignore[method-assign]
    statuses = []
    for i in range(40):
        async with http.get(f"{gw.url}/v1/models", headers=_bearer(f"fg-guess-{i:04d}-abcdefghijklmnop")) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                retry_after = resp.headers["retry-after"]
                error = await _error(resp)
    assert statuses[:20] == [401] * 20 and 429 in statuses[20:]
    assert int(retry_after) >= 1 and error["type"] == "rate_limit_error" and "failed authentication" in str(error)
    assert store_lookups <= 21  # the burst, and at most one refilled token during the loop
    # The admin API, the dashboard and /metrics share the address's budget: a blocked prober is blocked there too.
    for path in ("/admin/tenants", "/dashboard/api/overview", "/metrics", "/v1/usage"):
        async with http.get(f"{gw.url}{path}", headers=_bearer("fg-wrong-admin-key-000000")) as resp:
            assert resp.status == 429, path
