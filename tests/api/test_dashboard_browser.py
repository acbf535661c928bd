"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real gateway with traffic.

Never a downloaded browser (`playwright install` is not used): /usr/bin/chromium from apt. Missing chromium or
playwright fails the test, naming what to install (it never skips).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica
from tests.api.test_dashboard import add_tenant, attach_dashboard, set_prices
from tests.fakes import FakeEngine
from tests.gateway_harness import ADMIN_KEY, RunningGateway, running_gateway
from tests.servers.process import missing

CHROMIUM = "/usr/bin/chromium"
# As root on a closed network chromium needs these, or it stalls on refused connections (issue 9).
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--headless=new",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
ROUNDS = 60  # samples of traffic, 5 (simulated) seconds apart: five minutes of chart
CHARTS = {
    "chart-ttft": {"ttft_p50", "ttft_p99"},
    "chart-throughput": {"requests_per_s", "output_tokens_per_s"},
    "chart-cache": {"cache_hit_ratio"},
    "chart-queue": {"queue_depth", "in_flight"},
}


def _playwright() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "the Python package playwright is not installed: pip install -e '.[test]' (never `playwright install`)"
        )
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(str(missing(CHROMIUM, "chromium")))
    return async_playwright


def _engine_scrape(replica: Replica, requests: int) -> None:
    """What the scraper would leave on the replica after `requests` more (the fake engine has no /metrics)."""
    old = replica.metrics or ReplicaMetrics(scraped_at=0, generation_tokens=0, prefix_queries=0, prefix_hits=0)
    replica.metrics = ReplicaMetrics(
        scraped_at=time.monotonic(),
        running=replica.in_flight,
        kv_usage=min(0.9, 0.15 + 0.1 * replica.in_flight),
        generation_tokens=(old.generation_tokens or 0) + 4 * requests,  # the fake engine's usage per request
        prefix_queries=(old.prefix_queries or 0) + 7 * requests,
        prefix_hits=(old.prefix_hits or 0) + 3 * requests,
    )


async def _traffic(gw: RunningGateway, clock: list[float]) -> dict[str, str]:
    """ROUNDS rounds of mixed traffic from two tenants, one sample per round; acme's key."""
    ts = attach_dashboard(gw, clock=lambda: clock[0])
    replicas = gw.gateway.registry.all()
    await set_prices(gw)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        acme = await add_tenant(http, gw, "acme", rpm=40)  # acme runs into its limit: throttles show

        async def call(headers: dict[str, str], stream: bool) -> None:
            async with http.post(
                f"{gw.url}/v1/chat/completions", json={**body, "stream": stream}, headers=headers
            ) as r:
                await r.read()

        ts.sample()
        for i in range(ROUNDS):
            n = 1 + (i * 7) % 6 + (4 if 20 <= i < 30 else 0)  # a busier stretch in the middle
            calls = [call(gw.headers if j % 3 else acme, stream=j % 2 == 0) for j in range(n)]
            tasks = [asyncio.create_task(c) for c in calls]
            await asyncio.sleep(0.02)  # sample while requests are in flight and queued
            for replica in replicas:
                _engine_scrape(replica, n // len(replicas))
            clock[0] += 5.0
            ts.sample()
            await asyncio.gather(*tasks)
        for replica in replicas:
            _engine_scrape(replica, 0)
        clock[0] += 5.0
        ts.sample()
        for _ in range(200):  # the ledger receives the events asynchronously
            async with http.get(f"{gw.url}/dashboard/api/overview", headers=gw.admin_headers) as r:
                overview = await r.json()
            if {t["tenant"] for t in overview["tenants"] if t["requests_today"]} >= {"demo", "acme"}:
                break
            await asyncio.sleep(0.05)
    return acme


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    engines = [FakeEngine(model="smollm2", delay=0.01) for _ in range(2)]
    for engine in engines:
        await engine.start()
    admission = {"admission": {"max_in_flight_per_replica": 2}}  # a small fleet: bursts wait in the queue
    try:
        async with running_gateway([e.url for e in engines], sections=admission) as running:
            yield running
    finally:
        for engine in engines:
            await engine.stop()


async def _series_paths(page: Any, chart: str) -> dict[str, dict[str, Any]]:
    return dict(
        await page.eval_on_selector_all(
            f"#{chart} path.series",
            """paths => paths.map(p => [p.dataset.series,
                {points: Number(p.dataset.points), coords: (p.getAttribute('d').match(/[ML]/g) || []).length,
                 box: p.getBBox().width}])""",
        )
    )


async def test_dashboard_in_chromium(gw: RunningGateway, tmp_path: Path) -> None:
    async_playwright = _playwright()
    clock = [time.time() - 5.0 * (ROUNDS + 1)]
    acme = await _traffic(gw, clock)
    console_errors: list[str] = []
    foreign: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(20_000)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith((gw.url, "data:")) else foreign.append(r.url))
            await page.goto(f"{gw.url}/dashboard")
            await page.wait_for_selector("#login-form", state="visible")

            # A wrong key: an error, no data.
            await page.fill("#key", "fg-not-a-key-0000")
            await page.click("#login-submit")
            await page.wait_for_function("() => document.querySelector('#login-error').textContent.length > 0")
            assert "invalid API key" in await page.text_content("#login-error")
            assert await page.is_hidden("#admin")

            # The admin key: fleet, tenants, charts, decisions.
            await page.fill("#key", ADMIN_KEY)
            await page.click("#login-submit")
            await page.wait_for_function(
                "() => document.querySelector('#fleet tbody').textContent.includes('engine-0')"
                " && document.querySelectorAll('#chart-ttft path.series').length === 2"
            )
            assert await page.evaluate("sessionStorage.getItem('fleetgate.dashboard.key')") == ADMIN_KEY
            rows = await page.eval_on_selector_all(
                "#fleet tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
            )
            assert [r[:3] for r in rows] == [["engine-0", "smollm2", "healthy"], ["engine-1", "smollm2", "healthy"]]
            # KV from the engine scrape; idle in the last step, so the cache hit ratio is the engine's cumulative one.
            assert all(r[5] == "15.0%" and r[6] == "42.9%" and r[7] == "0" for r in rows), rows
            for chart, expected in CHARTS.items():
                paths = await _series_paths(page, chart)
                assert set(paths) == expected, (chart, paths)
                for name, p in paths.items():
                    # A drawn line: many points (ROUNDS samples), spread across the chart's width.
                    assert p["points"] >= ROUNDS // 2 and p["coords"] == p["points"], (chart, name, p)
                    assert p["box"] > 100, (chart, name, p)
            legend = await page.text_content("#legend-cache")
            assert "42.9%" in legend  # the fake engine reports 3 of 7 prompt tokens cached
            tenants = await page.text_content("#tenants tbody")
            assert "demo" in tenants and "acme" in tenants
            spend = await page.eval_on_selector_all(
                "#tenants tbody tr", "rows => rows.map(r => r.lastElementChild.textContent)"
            )
            assert any(float(s) > 0 for s in spend), spend
            assert await page.text_content("#currency") == "(USD)"
            decisions = await page.eval_on_selector_all("#decisions tbody tr", "rows => rows.length")
            assert decisions >= 10
            routes = await page.eval_on_selector_all(
                "#decisions tbody tr", "rows => rows.map(r => r.lastElementChild.textContent)"
            )
            assert all(":" in r for r in routes), routes  # policy:reason
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)

            # A tenant key after signing out: only that tenant's page, nothing left over from the admin view.
            await page.click("#signout")
            await page.wait_for_selector("#login-form", state="visible")
            await page.fill("#key", acme["Authorization"].removeprefix("Bearer "))
            await page.click("#login-submit")
            await page.wait_for_function("() => document.querySelector('#who').textContent === 'tenant acme'")
            await page.wait_for_selector("#tenant-usage tbody tr")
            assert await page.is_hidden("#admin") and await page.is_visible("#tenant")
            everything = await page.evaluate("document.body.textContent")
            assert "engine-" not in everything and "demo" not in everything
            assert "smollm2" in await page.text_content("#tenant-usage tbody")
            paths = await _series_paths(page, "chart-tenant")
            assert paths["requests_per_s"]["points"] >= ROUNDS // 2
            await page.screenshot(path=str(tmp_path / "dashboard-tenant.png"), full_page=True)
        finally:
            await browser.close()
    # Chromium logs every 401 as a console error: the wrong key and the tenant key's first try (overview) are ones.
    unexpected = [e for e in console_errors if "status of 401" not in e]
    assert not unexpected, unexpected
    assert not foreign, f"the page fetched from outside the gateway: {foreign}"
    assert shot.stat().st_size > 20_000
    if os.environ.get("FLEETGATE_UPDATE_SCREENSHOT") == "1":  # refresh docs/dashboard.png on request only
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
