"""What a tenant can learn through the hot path (issue 17.9): no topology by default, no other tenant's models or
adapters in errors, no label or ledger row per made-up model name."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import running_gateway
from tests.serving.helpers import CHAT, ledger_row, post, tenant_key


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    pair = [FakeEngine(model="fake"), FakeEngine(model="secret-model")]
    for engine in pair:
        await engine.start()
    yield pair
    for engine in pair:
        await engine.stop()


async def test_topology_headers_only_when_the_operator_turns_them_on(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    async with running_gateway([engines[0].url], expose_route_headers=False) as gw:
        resp = await post(http, gw, CHAT)
        assert resp.status == 200 and "x-request-id" in resp.headers
        assert not [h for h in resp.headers if h.lower().startswith("x-fleetgate-")]
    async with running_gateway([engines[0].url], expose_route_headers=True) as gw:
        resp = await post(http, gw, CHAT)
        assert resp.headers["x-fleetgate-replica"] == "engine-0"


async def test_unknown_model_errors_name_only_the_tenants_models(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    async with running_gateway([e.url for e in engines]) as gw:
        key = await tenant_key(http, gw, "narrow", models=["fake"])
        resp = await post(http, gw, {**CHAT, "model": "nope"}, key=key)
        assert resp.status == 404
        message = (await resp.json())["error"]["message"]
        assert "fake" in message and "secret-model" not in message


async def test_made_up_model_names_never_become_labels_or_ledger_rows(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    async with running_gateway([engines[0].url], sections={"observability": {"max_tenant_labels": 5}}) as gw:
        ids = []
        for i in range(20):
            resp = await post(http, gw, {**CHAT, "model": f"random-{i}"})
            assert resp.status == 404
            ids.append(resp.headers["x-request-id"])
        assert (await post(http, gw, CHAT)).status == 200
        text = gw.gateway.metrics.render().decode()
        assert "random-" not in text
        assert 'model="fake"' in text  # the real model still has its own label, however many names came first
        rows = [await ledger_row(gw, rid) for rid in ids[:3]]
        assert {r.model for r in rows} == {"-"} and {r.status for r in rows} == {"rejected"}
