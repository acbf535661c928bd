"""The gateway's /v1 hot path against in-process fake engines over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes import FakeEngine, free_port
from tests.gateway_harness import RunningGateway, running_gateway

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    pair = [FakeEngine(), FakeEngine()]
    for engine in pair:
        await engine.start()
    yield pair
    for engine in pair:
        await engine.stop()


@pytest.fixture
async def gw(engines: list[FakeEngine]) -> AsyncIterator[RunningGateway]:
    async with running_gateway([e.url for e in engines]) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def _post(http: aiohttp.ClientSession, gw: RunningGateway, body: object, **kw: object) -> aiohttp.ClientResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**gw.headers, "content-type": "application/json", **kw.pop("headers", {})}  # type: ignore[dict-item]
    return await http.post(f"{gw.url}/v1/chat/completions", data=data, headers=headers)


async def _events(resp: aiohttp.ClientResponse) -> list[str]:
    raw = (await resp.read()).decode()
    return [e for e in raw.split("\n\n") if e]


async def test_non_stream_passes_body_and_names_replica(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    resp = await _post(http, gw, CHAT)
    assert resp.status == 200
    data = await resp.json()
    assert data["choices"][0]["message"]["content"] == "hello"
    assert data["usage"]["prompt_tokens"] == 7
    assert resp.headers["x-fleetgate-replica"] in {"engine-0", "engine-1"}
    assert resp.headers["x-fleetgate-route"] == "round_robin:turn"
    rid = resp.headers["x-request-id"]
    assert len(rid) == 36 and rid[14] == "7"  # a UUIDv7


async def test_requests_spread_over_both_replicas(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    seen = Counter()
    for _ in range(6):
        resp = await _post(http, gw, CHAT)
        assert resp.status == 200
        seen[resp.headers["x-fleetgate-replica"]] += 1
    assert seen == {"engine-0": 3, "engine-1": 3}


async def test_stream_forces_usage_upstream_and_hides_it_from_client(
    gw: RunningGateway, http: aiohttp.ClientSession, engines: list[FakeEngine]
) -> None:
    resp = await _post(http, gw, {**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = await _events(resp)
    sent = [b for e in engines for b in e.bodies]
    assert sent[-1]["stream_options"] == {"include_usage": True}
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in e for e in events)  # the client did not ask for it
    assert len(events) == 4 + 1 + 1  # content chunks, finish chunk, [DONE]


async def test_stream_keeps_usage_when_client_asks(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = await _post(http, gw, body)
    events = await _events(resp)
    usage = json.loads(events[-2].removeprefix("data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] == 3


async def test_stream_bytes_arrive_unbuffered(
    gw: RunningGateway, http: aiohttp.ClientSession, engines: list[FakeEngine]
) -> None:
    # The engines send one chunk and then wait for the client to have it: a buffering gateway would deadlock here
    # (the client's read times out), an unbuffered one passes at any machine speed.
    hold = asyncio.Event()
    for engine in engines:
        engine.hold = hold
    resp = await _post(http, gw, {**CHAT, "stream": True})
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 15)
    assert first.startswith(b"data: ")
    hold.set()
    assert b"[DONE]" in await resp.read()


@pytest.mark.parametrize(
    ("auth", "message"),
    [(None, "missing API key"), ("Bearer wrong-key-123", "invalid API key"), ("Basic abc", "malformed")],
)
async def test_bad_key_is_401(gw: RunningGateway, http: aiohttp.ClientSession, auth: str | None, message: str) -> None:
    headers = {"content-type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    resp = await http.post(f"{gw.url}/v1/chat/completions", data=json.dumps(CHAT), headers=headers)
    assert resp.status == 401
    err = (await resp.json())["error"]
    assert message in err["message"]
    assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    assert "wrong-key-123" not in err["message"]


async def test_models_requires_key_and_lists_served_models(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    assert (await http.get(f"{gw.url}/v1/models")).status == 401
    resp = await http.get(f"{gw.url}/v1/models", headers=gw.headers)
    assert [m["id"] for m in (await resp.json())["data"]] == ["fake"]


async def test_unknown_model_is_404(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    resp = await _post(http, gw, {**CHAT, "model": "gpt-17"})
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model" and "gpt-17" in err["message"]


@pytest.mark.parametrize(
    ("body", "needle", "param"),
    [
        (b"{not json", "not valid JSON", None),
        (b"[1, 2]", "must be a JSON object", None),
        (b"", "empty", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "`model` is required", "model"),
        (json.dumps({"model": "fake", "messages": []}).encode(), "`messages`", "messages"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), "`stream` must be a boolean", "stream"),
    ],
)
async def test_malformed_requests_are_400(
    gw: RunningGateway, http: aiohttp.ClientSession, body: bytes, needle: str, param: str | None
) -> None:
    resp = await _post(http, gw, body)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert needle in err["message"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


async def test_engine_4xx_passes_through(
    gw: RunningGateway, http: aiohttp.ClientSession, engines: list[FakeEngine]
) -> None:
    for engine in engines:
        engine.mode = "error400"
    resp = await _post(http, gw, CHAT)
    assert resp.status == 400
    assert "context too long" in (await resp.json())["error"]["message"]


async def test_engine_500_retries_on_the_other_replica(
    gw: RunningGateway, http: aiohttp.ClientSession, engines: list[FakeEngine]
) -> None:
    engines[0].mode = "error500"
    for _ in range(4):
        resp = await _post(http, gw, CHAT)
        assert resp.status == 200
        assert resp.headers["x-fleetgate-replica"] == "engine-1"


async def test_stale_connection_is_retried(
    gw: RunningGateway, http: aiohttp.ClientSession, engines: list[FakeEngine]
) -> None:
    for engine in engines:
        engine.drop_next(1)
    for _ in range(3):
        resp = await _post(http, gw, CHAT)
        assert resp.status == 200


async def test_all_engines_down_is_503_fast(http: aiohttp.ClientSession) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    engine = FakeEngine()
    await engine.start()
    # Start with one live replica so the model is known, then stop it.
    async with running_gateway([engine.url, *dead]) as gw:
        await engine.stop()
        started = time.monotonic()
        resp = await _post(http, gw, CHAT)
        assert resp.status in (502, 503)
        err = (await resp.json())["error"]
        assert "replica" in err["message"]
        assert time.monotonic() - started < 5
        assert resp.status != 503 or int(resp.headers["retry-after"]) >= 1


async def test_engine_that_hangs_times_out(http: aiohttp.ClientSession) -> None:
    engine = FakeEngine(mode="hang")
    await engine.start()
    try:
        async with running_gateway([engine.url], first_byte_timeout=0.5, retries=0) as gw:
            resp = await _post(http, gw, CHAT)
            assert resp.status == 504
            assert "no response within" in (await resp.json())["error"]["message"]
    finally:
        await engine.stop()


async def test_stream_broken_midway_ends_with_error_event(http: aiohttp.ClientSession) -> None:
    engine = FakeEngine(mode="break")
    await engine.start()
    try:
        async with running_gateway([engine.url]) as gw:
            resp = await _post(http, gw, {**CHAT, "stream": True})
            assert resp.status == 200
            events = await _events(resp)
            assert events[0].startswith("data: {")
            assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "upstream_error"
    finally:
        await engine.stop()


async def test_stream_without_done_is_flagged(http: aiohttp.ClientSession) -> None:
    engine = FakeEngine(mode="no_done")
    await engine.start()
    try:
        async with running_gateway([engine.url]) as gw:
            events = await _events(await _post(http, gw, {**CHAT, "stream": True}))
            assert "without [DONE]" in events[-1]
    finally:
        await engine.stop()


async def test_client_disconnect_cancels_engine_request(http: aiohttp.ClientSession) -> None:
    engine = FakeEngine(mode="slow", chunks=50)
    await engine.start()
    try:
        async with running_gateway([engine.url]) as gw:
            resp = await _post(http, gw, {**CHAT, "stream": True})
            await resp.content.readuntil(b"\n\n")
            resp.close()  # the client hangs up after one chunk
            for _ in range(50):
                if engine.cancelled:
                    break
                await asyncio.sleep(0.1)
            assert engine.cancelled == 1
            assert gw.gateway.completions.in_flight == 0
            assert all(r.in_flight == 0 for r in gw.gateway.registry.all())
    finally:
        await engine.stop()


async def test_unknown_path_and_wrong_method_are_openai_shaped(gw: RunningGateway, http: aiohttp.ClientSession) -> None:
    resp = await http.get(f"{gw.url}/v1/nothing")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await http.get(f"{gw.url}/v1/chat/completions", headers=gw.headers)
    assert resp.status == 405 and "Method Not Allowed" in (await resp.json())["error"]["message"]


async def test_a_gateway_bug_still_answers_openai_shaped_json(
    gw: RunningGateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.gateway.completions.forwarder.router, "pick", broken)
    resp = await _post(http, gw, CHAT)
    assert resp.status == 500
    error = (await resp.json())["error"]
    assert error["type"] == "server_error" and "internal error" in error["message"]
    monkeypatch.undo()
    assert (await _post(http, gw, CHAT)).status == 200  # the gateway itself is fine


async def test_readyz_follows_replica_health(engines: list[FakeEngine], http: aiohttp.ClientSession) -> None:
    async with running_gateway([engines[0].url]) as gw:
        assert (await http.get(f"{gw.url}/readyz")).status == 200
        await engines[0].stop()
        for _ in range(50):
            if (await http.get(f"{gw.url}/readyz")).status == 503:
                break
            await asyncio.sleep(0.1)
        assert (await http.get(f"{gw.url}/readyz")).status == 503
        assert (await http.get(f"{gw.url}/healthz")).status == 200
