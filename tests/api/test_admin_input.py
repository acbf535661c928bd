"""Admin input out of range is a 400 that names the field, never a plain-text 500 (issue 17.10), on SQLite and
PostgreSQL (whose int4 columns and NUL-free text are stricter than SQLite's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway

OUT_OF_RANGE: list[tuple[dict[str, Any], str]] = [
    ({"rpm": 10**30}, "rpm"),
    ({"tpm": 2**31}, "tpm"),
    ({"budget": 1e300}, "budget"),
    ({"max_output_tokens": 2**40}, "max_output_tokens"),
    ({"max_concurrency": 2**33}, "max_concurrency"),
    ({"name": "a\x00b"}, "name"),
    ({"models": ["m"] * 5000}, "models"),
    ({"models": ["m" * 1000]}, "models"),
    ({"io_log_retention_days": 1e308}, "io_log_retention_days"),
]


@pytest.fixture
async def gw(engine: FakeEngine, db_url: str) -> AsyncIterator[RunningGateway]:
    async with running_gateway([engine.url], sections={"database": {"url": db_url}}) as running:
        yield running


@pytest.mark.parametrize(("body", "field"), OUT_OF_RANGE, ids=[f for _, f in OUT_OF_RANGE])
async def test_out_of_range_tenant_fields_are_a_400(gw: RunningGateway, body: dict[str, Any], field: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{gw.url}/admin/tenants/acme", json=body, headers=gw.admin_headers) as resp,
    ):
        assert resp.status == 400 and resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert field in error["message"] and error["code"] == "invalid_request"


async def test_an_unexpected_admin_error_is_an_openai_shaped_500(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the store")

    monkeypatch.setattr(gw.gateway.store, "list_tenants", broken)
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/admin/tenants", headers=gw.admin_headers) as resp:
        assert resp.status == 500 and resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["type"] == "server_error" and "a bug" not in error["message"]
