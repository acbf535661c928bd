"""A tenant's caps hold for every field an engine reads (issue 17.5/17.6), seen from the engine's side."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.serving.helpers import CHAT, post, tenant_key


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeEngine]:
    engine = FakeEngine()
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def gw(fake: FakeEngine) -> AsyncIterator[RunningGateway]:
    async with running_gateway([fake.url]) as running:
        yield running


async def test_engine_native_lengths_never_pass_the_cap(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    key = await tenant_key(http, gw, "capped", max_output_tokens=3)
    for extra in ({"n_predict": 10}, {"n_predict": -1}, {"max_completion_tokens": 10, "max_tokens": 2}, {}):
        body = {"model": "fake", "prompt": "hi", **extra}
        resp = await post(http, gw, body, path="/v1/completions", key=key)
        assert resp.status == 200, await resp.text()
        sent = fake.bodies[-1]
        assert sent["max_tokens"] == 3 and "n_predict" not in sent and "max_completion_tokens" not in sent, extra


async def test_slot_adapter_and_scheduling_controls_are_dropped(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    controls = {"id_slot": 0, "lora": [{"id": 0, "scale": 9}], "cache_prompt": False, "priority": -10, "n_keep": -1}
    resp = await post(http, gw, {**CHAT, **controls})
    assert resp.status == 200
    assert not set(controls) & set(fake.bodies[-1])


async def test_token_id_prompts_meet_the_input_cap(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await tenant_key(http, gw, "small-input", max_input_tokens=1000)
    resp = await post(http, gw, {"model": "fake", "prompt": list(range(5000))}, path="/v1/completions", key=key)
    assert resp.status == 400
    assert "about 5000 tokens" in (await resp.json())["error"]["message"]


async def test_n_multiplies_what_the_token_rate_limit_sees(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await tenant_key(http, gw, "tpm", tpm=100)
    ok = await post(http, gw, {**CHAT, "max_tokens": 20}, key=key)
    assert ok.status == 200
    resp = await post(http, gw, {**CHAT, "max_tokens": 20, "n": 8}, key=key)
    assert resp.status == 429
    assert "more than tenant 'tpm''s limit of 100 tokens per minute" in (await resp.json())["error"]["message"]


async def test_a_bad_field_type_is_a_400_not_a_500(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    for bad in ({"n": "4"}, {"n_predict": "x"}, {"top_logprobs": 10_000}, {"messages": ["hi"]}, {"model": "m" * 300}):
        resp = await post(http, gw, {**CHAT, **bad})
        assert resp.status == 400, (bad, await resp.text())
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
