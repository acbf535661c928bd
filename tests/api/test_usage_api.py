"""`GET /v1/usage` shows a tenant only its own usage (401 without a key); `GET /admin/usage` shows everyone's,
with cost and margin. Served by uvicorn on 127.0.0.1 and read over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import uvicorn
from fastapi import FastAPI

from fleetgate.api.app import make_api
from fleetgate.api.auth import Credentials
from fleetgate.api.usage import admin_usage_router, usage_router
from fleetgate.billing.rating import PriceBookSpec, Rating
from fleetgate.domain.errors import AuthenticationFailed
from fleetgate.http.server import bind_socket
from fleetgate.metering.ledger import SqlLedger
from fleetgate.tenancy.auth import Authenticate, Principal, bearer_token
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from tests.billing.test_rating import BOOK1, BOOK2, E1, E2, E3

PERIOD = {"since": "2026-11-01", "until": "2026-11-30"}
HIDDEN = {"cost", "cost_micros", "margin", "margin_micros", "tenant_id"}


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, loop="none", lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


def apps(ledger: SqlLedger, rating: Rating, authenticate: Authenticate) -> tuple[FastAPI, FastAPI]:
    """The tenant route, and the admin router alone (the admin key is the admin API's, tested there)."""
    credentials = Credentials.of(None, None, authenticate)
    return make_api([usage_router(ledger, rating)], credentials), make_api(
        [admin_usage_router(ledger, rating)], credentials
    )


@dataclass
class Env:
    v1: str
    admin: str
    keys: dict[str, str]
    http: aiohttp.ClientSession

    async def get(self, url: str, key: str | None = None, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.get(url, params=params, headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def env(db_url: str) -> AsyncIterator[Env]:
    store = await TenantStore.open(db_url)
    ledger = SqlLedger(store.engine)
    rating = Rating(store.engine, tenant_names=store.external_ids)
    principals: dict[str, Principal] = {}
    keys: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name in ("acme", "bravo"):
        tenant, _ = await store.upsert_tenant(TenantSpec(external_id=name))
        key, info = await store.create_key(name)
        principals[key], keys[name], ids[f"tid-{name}"] = Principal(info, tenant), key, tenant.id

    async def authenticate(header: bytes | None, *, client: str | None = None) -> Principal:
        # A stub of TenantAuthenticator.authenticate: same header parsing, keys looked up in a dict.
        principal = principals.get(bearer_token(header))
        if principal is None:
            raise AuthenticationFailed("invalid API key: check the key you were given")
        return principal

    # A book is in force from its creation: create them first, then today's event (rated with the newest, v2).
    await rating.create_book(PriceBookSpec.model_validate(BOOK1))
    await rating.create_book(PriceBookSpec.model_validate(BOOK2))
    now = datetime.now(UTC).timestamp()
    today = replace(E1, event_id="e-today", started_at=now, ended_at=now + 2)
    await ledger.insert([replace(e, tenant_id=ids[e.tenant_id]) for e in (E1, E2, E3, today)])
    v1, admin = apps(ledger, rating, authenticate)
    async with serve(v1) as v1_url, serve(admin) as admin_url, aiohttp.ClientSession() as http:
        yield Env(v1_url, admin_url, keys, http)
    await store.close()


def lines(body: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(x["tenant"], x["model"], x["charge_micros"]) for x in body["lines"]]


async def test_each_tenant_sees_only_its_own_usage(env: Env) -> None:
    status, mine = await env.get(f"{env.v1}/v1/usage", env.keys["acme"], **PERIOD)
    assert status == 200 and mine["object"] == "usage.report" and mine["tenant"] == "acme"
    # Rated with v1, the book in effect (both books are newer than these days): 180 micros, as in test_rating.
    nov2 = [line for line in mine["lines"] if line["day"] == "2026-11-02"]
    assert [(x["tenant"], x["model"], x["charge_micros"]) for x in nov2] == [("acme", "smollm2", 180)]
    assert {x["tenant"] for x in mine["lines"]} == {"acme"}
    assert not HIDDEN & set(mine["lines"][0]) and not HIDDEN & set(mine["totals"])
    status, theirs = await env.get(f"{env.v1}/v1/usage", env.keys["bravo"], tenant="acme", **PERIOD)
    assert status == 200 and {x["tenant"] for x in theirs["lines"]} == {"bravo"}  # ?tenant= cannot widen it
    assert theirs["totals"]["charge_micros"] == 131_481 and theirs["totals"]["unpriced_requests"] == 1


async def test_default_window_is_this_month(env: Env) -> None:
    status, body = await env.get(f"{env.v1}/v1/usage", env.keys["acme"])
    today = datetime.now(UTC).date()
    assert status == 200 and body["since"] == today.replace(day=1).isoformat() and body["until"] == today.isoformat()
    # Today's copy of E1 is rated with the newest book (v2, acme's override): 84 micros.
    assert [(x["day"], x["charge_micros"], x["price_book_version"]) for x in body["lines"]][-1] == (
        today.isoformat(),
        84,
        2,
    )


@pytest.mark.parametrize("header", [None, "Bearer fg-wrong-key-000000", "Basic abc"])
async def test_unauthenticated_is_401(env: Env, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    async with env.http.get(f"{env.v1}/v1/usage", headers=headers, params=PERIOD) as resp:
        body = await resp.json()
        assert resp.status == 401 and resp.content_type == "application/json"
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"
    assert "lines" not in body


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-30", "until": "2026-11-01"}, "since"),
        ({"until": "x"}, "until"),
    ],
)
async def test_bad_period_is_400(env: Env, params: dict[str, str], param: str) -> None:
    status, body = await env.get(f"{env.v1}/v1/usage", env.keys["acme"], **params)
    assert status == 400 and body["error"]["code"] == "invalid_request" and body["error"]["param"] == param
    status, body = await env.get(f"{env.v1}/v1/usage", env.keys["acme"], since="2020-01-01", until="2026-01-01")
    assert status == 400 and "at most 400 days" in body["error"]["message"]


async def test_admin_sees_every_tenant_with_cost_and_margin(env: Env) -> None:
    status, body = await env.get(f"{env.admin}/usage", **PERIOD)
    assert status == 200
    assert lines(body)[:3] == [
        ("acme", "smollm2", 180),
        ("bravo", "mystery", 0),
        ("bravo", "smollm2:support-bot", 131_481),
    ]
    assert body["lines"][0]["cost_micros"] == 200 and body["lines"][0]["margin"] == "-0.00002"
    status, v2 = await env.get(f"{env.admin}/usage", tenant="bravo", price_book="2", **PERIOD)
    assert status == 200 and v2["price_book_version"] == 2
    assert lines(v2) == [("bravo", "mystery", 30), ("bravo", "smollm2:support-bot", 366_296)]
    assert v2["totals"]["margin_micros"] == 30 + 326_296
    status, err = await env.get(f"{env.admin}/usage", price_book="9")
    assert status == 404 and err["error"]["code"] == "not_found"
    status, err = await env.get(f"{env.admin}/usage", since="soon")
    assert status == 400 and err["error"]["type"] == "invalid_request_error"


async def test_admin_raw_events_paginate(env: Env) -> None:
    status, first = await env.get(f"{env.admin}/usage/events", tenant="bravo", limit="1")
    assert status == 200 and [e["event_id"] for e in first["data"]] == ["e2"] and first["next_cursor"]
    status, second = await env.get(f"{env.admin}/usage/events", tenant="bravo", limit="1", after=first["next_cursor"])
    assert [e["event_id"] for e in second["data"]] == ["e3"] and second["next_cursor"] is None
    status, one = await env.get(f"{env.admin}/usage/events/e1")
    assert status == 200 and one["prompt_tokens"] == 1000 and one["model"] == "smollm2"
    status, err = await env.get(f"{env.admin}/usage/events/nope")
    assert status == 404 and err["error"]["code"] == "not_found"
    status, err = await env.get(f"{env.admin}/usage/events", after="garbage")
    assert status == 400 and "cursor" in err["error"]["message"]
