"""Usage capture against a real gateway: an engine's usage block is read once, the same way, by the ledger, the
tenant's limits and the metrics, however wrong the engine's numbers are."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeEngine
from tests.gateway_harness import running_gateway
from tests.serving.helpers import CHAT, ledger_row, post, tenant_key


@pytest.fixture
async def fake() -> AsyncIterator[FakeEngine]:
    engine = FakeEngine()
    await engine.start()
    yield engine
    await engine.stop()


async def test_an_engines_wrong_counts_are_clamped_the_same_for_ledger_limits_and_metrics(fake: FakeEngine) -> None:
    # A fraction, a negative completion and more cached tokens than the prompt had.
    fake.usage = {"prompt_tokens": 50.9, "completion_tokens": -40, "prompt_tokens_details": {"cached_tokens": 80}}
    async with (
        running_gateway([fake.url]) as gw,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        key = await tenant_key(http, gw, "acme", tpm=60)  # refills 1 token/s: slow enough to read
        resp = await post(http, gw, CHAT, key=key)
        assert resp.status == 200, await resp.text()
        row = await ledger_row(gw, resp.headers["x-request-id"])
        assert (row.usage_source, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == ("engine", 50, 50, 0)
        tenant = await gw.gateway.store.get_tenant("acme")
        assert tenant is not None
        counters = await gw.gateway.gate.limiter.counters(tenant.id, tenant.limits)
        # Settled to the clamped 50 + 0 tokens (60 - 50 = 10 plus the refill since), not to 50 - 40.
        assert counters.tokens_available is not None and 10 <= counters.tokens_available < 40
        async with http.get(f"{gw.url}/metrics", headers=gw.admin_headers) as r:
            text = await r.text()
    tokens = {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fleetgate_tokens_total" and s.labels["tenant"] == "acme"
    }
    assert tokens == {"fresh": 0, "cached": 50, "output": 0}
