"""The outcome table (docs/billing.md): every way a request ends, what the client sees, what the ledger and the
tenant's limits record. One real gateway in front of a fake engine per case."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fleetgate.tenancy.limits.base import TenantCounters
from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.serving.helpers import CHAT, ledger_row, post, sse_events
from tests.waiting import wait_until

PRICED = {"prices": {"models": {"fake": {"input": 1000.0, "cached_input": 500.0, "output": 2000.0}}}}
USAGE_50_40 = {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}


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
    async with running_gateway([fake.url], sections=PRICED, first_byte_timeout=2.0, retries=1) as running:
        yield running


async def _counters(gw: RunningGateway) -> TenantCounters:
    tenant = await gw.gateway.store.get_tenant("demo")
    assert tenant is not None
    return await gw.gateway.gate.limiter.counters(tenant.id, tenant.limits)


async def test_ok_stream_bills_the_engine_usage(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    fake.usage = USAGE_50_40
    resp = await post(http, gw, {**CHAT, "stream": True})
    assert resp.status == 200 and sse_events(await resp.read())[-1] == "data: [DONE]"
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.usage_source, row.prompt_tokens, row.completion_tokens) == ("ok", "engine", 50, 40)
    assert row.billable
    assert (await _counters(gw)).spend_micros > 0


async def test_done_inside_the_text_is_billed_from_the_engines_usage(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    # Issue 17.1: the ledger said ok / estimate / 2 prompt / 0 completion for exactly this stream.
    fake.text, fake.usage = " [DONE]", USAGE_50_40
    resp = await post(http, gw, {**CHAT, "stream": True})
    events = sse_events(await resp.read())
    assert events[-1] == "data: [DONE]" and '" [DONE]"' in events[0]
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.usage_source, row.prompt_tokens, row.completion_tokens) == ("ok", "engine", 50, 40)


async def test_a_hang_up_after_done_in_the_text_still_stops_the_engine(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    fake.text, fake.mode, fake.chunks = "[DONE]", "slow", 50
    resp = await post(http, gw, {**CHAT, "stream": True})
    await resp.content.readuntil(b"\n\n")
    rid = resp.headers["x-request-id"]
    resp.close()
    await wait_until(lambda: fake.cancelled == 1, what="the engine request to be cancelled")
    row = await ledger_row(gw, rid)
    assert row.status == "client_abort" and row.billable


async def test_engine_4xx_is_reshaped_and_bills_nothing(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    # vLLM's error shape: an integer code, no param. Clients must get OpenAI's: a string code and a param.
    fake.error_answer = (400, {"object": "error", "message": "max_tokens is too large", "type": "BadRequestError",
                               "param": "max_tokens", "code": 400})  # fmt: skip
    resp = await post(http, gw, CHAT)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error == {
        "message": "max_tokens is too large",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid_request",
    }
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.http_status, row.prompt_tokens, row.completion_tokens) == ("rejected", 400, 0, 0)


async def test_engine_5xx_after_retries_bills_nothing(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    fake.mode = "error500"
    resp = await post(http, gw, CHAT)
    assert resp.status == 502 and isinstance((await resp.json())["error"]["code"], str)
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.http_status, row.prompt_tokens, row.completion_tokens) == ("engine_error", 502, 0, 0)
    assert len(fake.bodies) == 2  # one retry


async def test_a_gateway_error_after_routing_is_never_billed_as_ok(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 17.2: a 500 from the gateway was recorded as status=ok, http_status=200, and billed the prompt.
    before = (await _counters(gw)).spend_micros

    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug while relaying")

    monkeypatch.setattr("fleetgate.serving.forward.relay_whole", broken)
    resp = await post(http, gw, CHAT)
    assert resp.status == 500 and (await resp.json())["error"]["type"] == "server_error"
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.http_status) == ("gateway_error", 500)
    assert not row.billable
    counters = await _counters(gw)
    assert counters.spend_micros == before and counters.in_flight == 0


async def test_nesting_orjson_reads_but_cannot_write_is_a_400(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    # Issue 17.2/17.7: 300 levels parsed, then failed when serialised for the engine: a 500 billed as ok.
    deep = "[" * 300 + "]" * 300
    raw = json.dumps(CHAT)[:-1].encode() + b', "metadata": ' + deep.encode() + b"}"
    resp = await post(http, gw, raw)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "nested more than" in error["message"] and error["code"] == "invalid_request"
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.http_status, row.prompt_tokens) == ("rejected", 400, 0)


async def test_first_byte_timeout_bills_nothing(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    fake.mode = "hang"
    resp = await post(http, gw, CHAT)
    assert resp.status == 504
    row = await ledger_row(gw, resp.headers["x-request-id"])
    assert (row.status, row.http_status, row.completion_tokens) == ("timeout", 504, 0)
    assert (await _counters(gw)).in_flight == 0


async def test_the_request_deadline_ends_a_stream_and_bills_what_was_relayed(
    fake: FakeEngine, http: aiohttp.ClientSession
) -> None:
    fake.mode, fake.chunks = "slow", 100
    async with running_gateway([fake.url], sections=PRICED, max_request_seconds=1.0) as gw:
        resp = await post(http, gw, {**CHAT, "stream": True})
        events = sse_events(await resp.read())
        assert resp.status == 200 and "ran longer than" in events[-1] and '"error"' in events[-1]
        row = await ledger_row(gw, resp.headers["x-request-id"])
        assert row.status == "timeout" and row.billable
        assert 0 < row.completion_tokens < 100  # what the client received
        await wait_until(lambda: fake.cancelled == 1, what="the engine request to be cancelled")


async def test_client_abort_mid_stream_bills_what_was_relayed(
    gw: RunningGateway, http: aiohttp.ClientSession, fake: FakeEngine
) -> None:
    fake.mode, fake.chunks = "slow", 50
    resp = await post(http, gw, {**CHAT, "stream": True})
    await resp.content.readuntil(b"\n\n")
    rid = resp.headers["x-request-id"]
    resp.close()
    row = await ledger_row(gw, rid)
    assert row.status == "client_abort" and row.billable
    assert row.usage_source in ("partial_count", "estimate") and row.completion_tokens >= 1
    await wait_until(lambda: fake.cancelled == 1, what="the engine request to be cancelled")
    assert (await _counters(gw)).in_flight == 0


async def test_an_engine_stalled_mid_stream_is_cut_and_bills_what_was_relayed(
    fake: FakeEngine, http: aiohttp.ClientSession
) -> None:
    fake.mode, fake.chunks = "stall", 10
    async with running_gateway([fake.url], sections=PRICED, idle_timeout=1.0) as gw:
        resp = await post(http, gw, {**CHAT, "stream": True})
        events = sse_events(await resp.read())
        assert resp.status == 200 and '"error"' in events[-1] and "interrupted" in events[-1]
        row = await ledger_row(gw, resp.headers["x-request-id"])
        assert (row.status, row.completion_tokens) == ("timeout", 2) and row.billable
        await wait_until(lambda: fake.cancelled == 1, what="the stalled engine request to be closed")
        assert (await _counters(gw)).in_flight == 0
