"""Every tenant-plane error through the real gateway, seen by the official `openai` SDK; admin API round trips."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway
from tests.waiting import wait_until

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _tenant(http: aiohttp.ClientSession, gw: RunningGateway, external_id: str, **spec: Any) -> str:
    """Create a tenant through the admin API and return a fresh key for it."""
    resp = await http.put(f"{gw.url}/admin/tenants/{external_id}", json=spec, headers=gw.admin_headers)
    assert resp.status in (200, 201), await resp.text()
    resp = await http.post(f"{gw.url}/admin/tenants/{external_id}/keys", json={}, headers=gw.admin_headers)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["key"])


def _sdk(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


async def _chat(gw: RunningGateway, key: str, **kw: Any) -> Any:
    async with _sdk(gw, key) as client:
        reply = await client.chat.completions.create(model=kw.pop("model", "smollm2"), messages=HI, **kw)
        if kw.get("stream"):
            return [chunk async for chunk in reply]
        return reply


async def test_unknown_key_401(gw: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        await _chat(gw, "fg-not-a-real-key-000000")


async def test_tenant_key_works_and_models_are_filtered(
    gw: RunningGateway, http: aiohttp.ClientSession, engine: FakeEngine
) -> None:
    key = await _tenant(http, gw, "acme", models=["smollm2"])
    reply = await _chat(gw, key, max_tokens=4)
    assert reply.choices[0].message.content == "hello"
    async with _sdk(gw, key) as client:
        assert [m.id async for m in client.models.list()] == ["smollm2"]
    none_key = await _tenant(http, gw, "nobody", models=[])
    async with _sdk(gw, none_key) as client:
        assert [m.id async for m in client.models.list()] == []


async def _refused(gw: RunningGateway, key: str, error: type[openai.APIStatusError], reason: str) -> bool:
    """True once a chat with `key` fails with `error` saying `reason`; False while it still succeeds."""
    try:
        await _chat(gw, key)
    except error as exc:
        assert reason in str(exc), exc
        return True
    return False


async def _served(gw: RunningGateway, key: str, error: type[openai.APIStatusError]) -> bool:
    """True once a chat with `key` succeeds; False while it fails with `error`."""
    try:
        await _chat(gw, key)
    except error:
        return False
    return True


async def test_revoked_key_stops_at_the_next_poll(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme")
    await _chat(gw, key)
    keys = await (await http.get(f"{gw.url}/admin/tenants/acme/keys", headers=gw.admin_headers)).json()
    resp = await http.post(f"{gw.url}/admin/keys/{keys[0]['id']}/revoke", headers=gw.admin_headers)
    assert resp.status == 200
    # The harness polls the tenant store every 0.1 s; the 10 s bound only tells a hang from a loaded machine.
    revoked = partial(_refused, gw, key, openai.AuthenticationError, "revoked")
    await wait_until(revoked, timeout=10, interval=0.05, what="the revoked key to be refused")


async def test_rotation_with_grace_keeps_old_key_briefly(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    old = await _tenant(http, gw, "acme")
    keys = await (await http.get(f"{gw.url}/admin/tenants/acme/keys", headers=gw.admin_headers)).json()
    resp = await http.post(
        f"{gw.url}/admin/keys/{keys[0]['id']}/rotate", json={"grace_seconds": 2.0}, headers=gw.admin_headers
    )
    new = (await resp.json())["key"]
    await _chat(gw, old)  # still inside the grace period
    await _chat(gw, new)
    expired = partial(_refused, gw, old, openai.AuthenticationError, "expired")
    await wait_until(expired, timeout=30, interval=0.1, what="the old key to expire after its grace")
    await _chat(gw, new)


async def test_suspended_tenant_403(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme")
    await http.post(f"{gw.url}/admin/tenants/acme/suspend", headers=gw.admin_headers)
    suspended = partial(_refused, gw, key, openai.PermissionDeniedError, "suspended")
    await wait_until(suspended, timeout=10, what="the suspension to reach the gateway")
    await http.post(f"{gw.url}/admin/tenants/acme/resume", headers=gw.admin_headers)
    resumed = partial(_served, gw, key, openai.PermissionDeniedError)
    await wait_until(resumed, timeout=10, what="the resumption to reach the gateway")


async def test_model_not_allowed_403_and_unknown_404(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme", models=["other-model"])
    with pytest.raises(openai.PermissionDeniedError, match="not allowed"):
        await _chat(gw, key)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        await _chat(gw, key, model="no-such-model")


async def test_max_tokens_clamped(gw: RunningGateway, http: aiohttp.ClientSession, engine: FakeEngine) -> None:
    key = await _tenant(http, gw, "acme", max_output_tokens=16)
    await _chat(gw, key, max_tokens=1000)
    assert engine.bodies[-1]["max_tokens"] == 16


async def test_max_tokens_rejected(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme", max_output_tokens=16, max_tokens_policy="reject")
    with pytest.raises(openai.BadRequestError, match="over this key's limit of 16"):
        await _chat(gw, key, max_tokens=1000)


async def test_input_over_cap_400(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme", max_input_tokens=10)
    with pytest.raises(openai.BadRequestError, match="input tokens"):
        async with _sdk(gw, key) as client:
            await client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "lorem ipsum " * 50}]
            )


async def test_rpm_429_with_retry_after(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme", rpm=3)
    for _ in range(3):
        await _chat(gw, key)
    with pytest.raises(openai.RateLimitError) as info:
        await _chat(gw, key)
    assert "3 requests per minute" in str(info.value)
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 20  # one request refills in 60/3 = 20 s


async def test_tpm_429(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    key = await _tenant(http, gw, "acme", tpm=100)
    with pytest.raises(openai.RateLimitError, match="more than tenant 'acme''s limit of 100 tokens per minute"):
        await _chat(gw, key, max_tokens=500)
    await _chat(gw, key, max_tokens=20)


async def test_concurrency_429_and_slot_release(
    gw: RunningGateway, http: aiohttp.ClientSession, engine: FakeEngine
) -> None:
    key = await _tenant(http, gw, "acme", max_concurrency=1)
    engine.delay = 0.5  # 4 chunks: the slow stream holds its slot for 2 s after it reaches the engine
    seen = len(engine.bodies)
    slow = asyncio.create_task(_chat(gw, key, stream=True))
    await wait_until(lambda: len(engine.bodies) > seen, what="the slow request to reach the engine")
    with pytest.raises(openai.RateLimitError, match="may run 1 at once"):
        await _chat(gw, key)
    await slow
    engine.delay = 0
    await _chat(gw, key)  # the slot came back


async def test_budget_429_names_the_budget(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    # smollm2 costs 0.10 / 0.20 per 1M tokens by default; a budget of a millionth is gone after one request.
    key = await _tenant(http, gw, "acme", budget=0.000001)
    await _chat(gw, key, max_tokens=4)
    with pytest.raises(
        openai.RateLimitError, match=re.escape("monthly budget of 0.00 USD for tenant 'acme' is exhausted")
    ):
        await _chat(gw, key, max_tokens=4)


@pytest.mark.parametrize("path", ["error500", "client_abort", "timeout"])
async def test_slots_are_released_on_every_path(http: aiohttp.ClientSession, path: str) -> None:
    mode = {"error500": "error500", "client_abort": "slow", "timeout": "hang"}[path]
    engine = FakeEngine(model="smollm2", mode=mode)
    engine.chunks = 30
    await engine.start()
    try:
        async with running_gateway([engine.url], first_byte_timeout=0.3, retries=0) as gw:
            key = await _tenant(http, gw, "acme", max_concurrency=1)
            body = {"model": "smollm2", "messages": HI, "stream": True}
            resp = await http.post(
                f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            if path == "client_abort":
                await resp.content.readuntil(b"\n\n")
                resp.close()
            else:
                assert resp.status in (502, 503, 504)
            tenant = (await (await http.get(f"{gw.url}/admin/tenants/acme", headers=gw.admin_headers)).json())["id"]
            limits = gw.gateway.gate.limiter
            for _ in range(50):
                from fleetgate.tenancy.limits.base import LimitSpec

                counters = await limits.counters(tenant, LimitSpec(max_concurrency=1))
                if counters.in_flight == 0:
                    break
                await asyncio.sleep(0.05)
            assert counters.in_flight == 0
    finally:
        await engine.stop()


async def test_admin_requires_its_key(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    resp = await http.get(f"{gw.url}/admin/tenants", headers=gw.headers)  # a tenant key is not an admin key
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"


async def test_admin_put_is_idempotent(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    spec = {"rpm": 60, "budget": 5.5, "models": ["smollm2"]}
    first = await http.put(f"{gw.url}/admin/tenants/acme", json=spec, headers=gw.admin_headers)
    second = await http.put(f"{gw.url}/admin/tenants/acme", json=spec, headers=gw.admin_headers)
    assert (first.status, first.headers["x-fleetgate-change"]) == (201, "created")
    assert (second.status, second.headers["x-fleetgate-change"]) == (200, "unchanged")
    body = await second.json()
    assert body["budget"] == 5.5 and body["rpm"] == 60 and body["models"] == ["smollm2"]


async def test_admin_validation_errors_are_openai_shaped(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    resp = await http.put(f"{gw.url}/admin/tenants/acme", json={"rpm": -1}, headers=gw.admin_headers)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert "rpm" in err["message"] and err["type"] == "invalid_request_error"
    resp = await http.get(f"{gw.url}/admin/tenants/nope", headers=gw.admin_headers)
    assert resp.status == 404 and "nope" in (await resp.json())["error"]["message"]


async def test_openapi_document(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    resp = await http.get(f"{gw.url}/admin/openapi.json", headers=gw.admin_headers)
    doc = await resp.json()
    assert doc["info"]["title"] == "fleetgate admin API"
    assert {"/tenants/{external_id}", "/tenants/{external_id}/keys", "/keys/{key_id}/rotate"} <= set(doc["paths"])
