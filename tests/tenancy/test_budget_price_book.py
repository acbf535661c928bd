"""One price model: the budget counter charges at the price book in force (versions, per-tenant overrides, the
rating policy, the one money function), so a tenant's month-to-date spend is what `fleetgate usage` bills."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from fleetgate.billing.price_books import PriceBooks, lead_time
from fleetgate.billing.prices import micros
from fleetgate.billing.rating import PerToken, PriceBookSpec, Rating
from fleetgate.config import PricesConfig
from fleetgate.db.engine import make_engine, migrate
from fleetgate.domain.usage import Usage
from fleetgate.tenancy.auth import Principal, TenantAuthenticator
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.limits.base import LimitSpec
from fleetgate.tenancy.limits.memory import MemoryLimiter
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from tests.fakes import FakeEngine
from tests.gateway_harness import RunningGateway, running_gateway

FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]
REFRESH = 0.2  # prices.refresh_interval of the gateway and the CLI under test
# Rates chosen so no request costs a whole number of micro-units: rounding each request would drift from the bill.
OVERRIDE_V2 = {"input": "0.13", "cached_input": "0.017", "output": "0.29"}
OVERRIDE_V3 = {"input": "0.41", "cached_input": "0.023", "output": "0.77"}


def book_yaml(path: Path, override: dict[str, str]) -> Path:
    spec = {
        "prices": {"smollm2": {"input": "0.10", "cached_input": "0.05", "output": "0.20"}},
        "tenant_overrides": {"acme": {"smollm2": override}},
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


async def wait_for(check: Any, what: str, timeout: float = 20.0) -> Any:
    """Poll an async check until it returns something truthy, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def cli(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *FLEETGATE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.fixture
async def live() -> AsyncIterator[RunningGateway]:
    engine = FakeEngine(model="smollm2", chunks_from_max_tokens=True)
    await engine.start()
    try:
        async with running_gateway([engine.url], sections={"prices": {"refresh_interval": REFRESH}}) as running:
            yield running
    finally:
        await engine.stop()


async def _requests(http: aiohttp.ClientSession, gw: RunningGateway, key: str, lengths: list[int]) -> None:
    for i, n in enumerate(lengths):
        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": n}
        body["stream"] = bool(i % 2)
        async with http.post(
            f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            await resp.read()


async def _set_book(env: dict[str, str], gw: RunningGateway, path: Path) -> int:
    stored = json.loads(await cli(env, "usage", "prices", "set", "-f", str(path), "--json"))
    version = int(stored["version"])
    books = gw.gateway.gate.prices

    async def in_force() -> bool:  # the gateway read it, and its time came
        book = books.book(time.time())
        return book is not None and book.version == version

    await wait_for(in_force, f"price book v{version} in force at the gateway")
    return version


async def _bills(
    env: dict[str, str], gw: RunningGateway, http: aiohttp.ClientSession, key: str, tenant_id: str, n: int
) -> tuple[int, int, int, dict[str, Any]]:
    """(budget counter, CLI report, tenant's /v1/usage) once the ledger holds `n` of acme's requests."""

    async def report() -> dict[str, Any] | None:
        found: dict[str, Any] = json.loads(await cli(env, "usage", "--tenant", "acme", "--json"))
        return found if found["totals"]["requests"] == n else None

    cli_report = await wait_for(report, f"{n} requests in the ledger")
    async with http.get(f"{gw.url}/v1/usage", headers={"Authorization": f"Bearer {key}"}) as resp:
        api = await resp.json()
    counters = await gw.gateway.gate.limiter.counters(tenant_id, LimitSpec())
    return counters.spend_micros, cli_report["totals"]["charge_micros"], api["totals"]["charge_micros"], cli_report


async def test_budget_spend_equals_the_bill_across_a_mid_month_book_change(
    live: RunningGateway, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "FLEETGATE_DATABASE__URL": live.gateway.config.database.url,
        "FLEETGATE_PRICES__REFRESH_INTERVAL": str(REFRESH),
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.put(f"{live.url}/admin/tenants/acme", json={"budget": 100}, headers=live.admin_headers) as resp:
            tenant_id = (await resp.json())["id"]
        async with http.post(f"{live.url}/admin/tenants/acme/keys", json={}, headers=live.admin_headers) as resp:
            key = (await resp.json())["key"]

        # The demo tenant's first request: the gateway holds its books by now (v1, seeded from `prices`).
        await _requests(http, live, live.headers["Authorization"].removeprefix("Bearer "), [1])
        assert [b.version for b in live.gateway.gate.prices.books] == [1]
        v2 = await _set_book(env, live, book_yaml(tmp_path / "v2.yaml", OVERRIDE_V2))  # stored after start
        await _requests(http, live, key, [1, 2, 3, 5, 8, 13, 21])
        spend, billed, api, report = await _bills(env, live, http, key, tenant_id, 7)
        assert spend == billed == api, report
        # Not the `prices` config (0.10/0.05/0.20): acme's override in v2, summed exactly and rounded once.
        assert billed == micros(_exact(report, {v2: OVERRIDE_V2})) > 0
        assert {line["price_book_version"] for line in report["lines"]} == {v2}

        v3 = await _set_book(env, live, book_yaml(tmp_path / "v3.yaml", OVERRIDE_V3))  # mid-month change
        await _requests(http, live, key, [4, 6, 9])
        spend, billed, api, report = await _bills(env, live, http, key, tenant_id, 10)
        assert spend == billed == api, report
        assert billed == micros(_exact(report, {v2: OVERRIDE_V2, v3: OVERRIDE_V3}))
        by_version = {line["price_book_version"]: line["requests"] for line in report["lines"]}
        assert by_version == {v2: 7, v3: 3}  # the requests after the change, at the new book, in both


def _exact(report: dict[str, Any], overrides: dict[int, dict[str, str]]) -> int:
    """The report's tokens at each line's book's override, in exact units (micro-units per 1M tokens x tokens)."""
    total = 0
    for line in report["lines"]:
        rate = {k: round(float(v) * 1_000_000) for k, v in overrides[line["price_book_version"]].items()}
        total += line["fresh_tokens"] * rate["input"] + line["cached_tokens"] * rate["cached_input"]
        total += line["output_tokens"] * rate["output"]
    return total


async def test_books_seed_from_config_and_refresh(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    await migrate(engine)
    try:
        books = PriceBooks(engine, PricesConfig.model_validate({"refresh_interval": REFRESH}))
        await books.start()
        try:
            [seeded] = await Rating(engine).books()  # the config's prices became version 1
            assert seeded.version == 1 and seeded.note and "config" in seeded.note
            now = time.time()
            assert books.rate("smollm2", None, "anyone", now) == seeded.prices["smollm2"]
            assert books.rate("other", None, "anyone", now) is None  # no `default` set: unpriced, as in rating
            later = datetime.now(UTC) + timedelta(seconds=lead_time(REFRESH))
            spec = PriceBookSpec.model_validate({"prices": {"*": {"input": 1, "output": 2}}})
            v2 = await Rating(engine).create_book(spec, in_force_from=later)
            await wait_for(lambda: _holds(books, 2), "the new version read")
            assert books.rate("other", None, "anyone", time.time()) is None  # held, not in force yet
            assert books.rate("other", None, "anyone", later.timestamp()) == v2.prices["*"]
        finally:
            await books.stop()
        again = PriceBooks(engine, PricesConfig())
        await again.start()
        await again.stop()
        assert len(await Rating(engine).books()) == 2  # seeded only into an empty ledger
    finally:
        await engine.dispose()


async def _holds(books: PriceBooks, version: int) -> bool:
    return any(b.version == version for b in books.books)


async def test_unreadable_ledger_charges_the_config_prices_meanwhile(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")  # cannot be opened
    threads_before = set(threading.enumerate())
    books = PriceBooks(engine, PricesConfig())
    await books.start()
    await books.stop()
    await engine.dispose()
    # aiosqlite stops the thread of a connection that failed to open without waiting for it: wait here, while this
    # test's loop still takes the thread's last answer (after the loop closes, the thread would fail posting it).
    opened = set(threading.enumerate()) - threads_before
    for thread in (t for t in opened if "_connection_worker_thread" in t.name):
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive(), f"{thread.name} did not stop"
    rate = books.rate("smollm2", None, "anyone", time.time())
    assert rate is not None and (rate.input, rate.cached_input, rate.output) == (100_000, 50_000, 200_000)


async def test_counter_rounds_the_month_to_date_sum_not_each_request(sqlite_url: str) -> None:
    store = await TenantStore.open(sqlite_url)
    try:
        tenant, _ = await store.upsert_tenant(TenantSpec(external_id="acme", budget=1))
        _, info = await store.create_key("acme")
        limiter = MemoryLimiter()
        gate = TenantGate(TenantAuthenticator(store), limiter, PricesConfig())
        principal = Principal(info, tenant)
        usage = Usage(prompt=7, cached=3, completion=3)
        for i in range(10):
            admission = await gate.admit(principal, {"model": "smollm2", "messages": []}, f"r{i}")
            await gate.settle(admission, usage, 0)
        # Each request is 0.4 + 0.15 + 0.6 = 1.15 micro-units: the bill says 11.5 -> 12; per request, 10 x 1 = 10.
        exact = sum(PerToken().amounts(gate.prices.rate("smollm2", None, "acme", time.time()) or _no_rate(), 7, 3, 3))
        assert exact * 10 == 11_500_000
        assert (await limiter.counters(tenant.id, tenant.limits)).spend_micros == micros(exact * 10) == 12
    finally:
        await store.close()


def _no_rate() -> Any:
    raise AssertionError("smollm2 has a price in the default config")


async def test_a_book_never_applies_before_gateways_can_hold_it(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FLEETGATE_DATABASE__URL": sqlite_url, "FLEETGATE_PRICES__REFRESH_INTERVAL": "2"}
    path = book_yaml(tmp_path / "b.yaml", OVERRIDE_V2)
    proc = await asyncio.create_subprocess_exec(
        *FLEETGATE,
        "usage",
        "prices",
        "set",
        "-f",
        str(path),
        "--from",
        "2026-01-01T00:00:00",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "in the past" in err.decode()
    before = datetime.now(UTC)
    soon = json.loads(await cli(env, "usage", "prices", "set", "-f", str(path), "--json"))
    # Default: two refresh intervals and a second ahead, so every gateway has read it when it applies.
    assert datetime.fromisoformat(soon["created_at"]) >= before + timedelta(seconds=lead_time(2.0))
    later = (before + timedelta(days=3)).replace(microsecond=0)
    scheduled = json.loads(
        await cli(env, "usage", "prices", "set", "-f", str(path), "--from", later.isoformat(), "--json")
    )
    assert datetime.fromisoformat(scheduled["created_at"]) == later
