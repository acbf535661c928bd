"""The dashboard's routes: who may see what (admin key, tenant key, none), and what the JSON says."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from fleetgate.api.app import make_api
from fleetgate.api.auth import Credentials
from fleetgate.api.dashboard import dashboard_router
from fleetgate.api.lanes import FastLane
from fleetgate.billing.rating import PriceBookSpec, Rating
from fleetgate.billing.report import UsageLine, UsageReport, UsageTotals
from fleetgate.domain.errors import AuthenticationFailed
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.observability.dashboard import ledger_usage_today
from fleetgate.observability.metrics import GatewayMetrics
from fleetgate.observability.timeseries import TimeSeries
from fleetgate.tenancy.auth import Principal
from fleetgate.tenancy.models import Tenant
from tests.gateway_harness import ADMIN_KEY, RunningGateway, gateway_with_fake_engine

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ACME = {"Authorization": "Bearer fg-acme-key"}
GLOBEX = {"Authorization": "Bearer fg-globex-key"}
BOOK = {"currency": "USD", "prices": {"*": {"input": 1.0, "cached_input": 0.5, "output": 2.0}}}


def _tenant(tid: str, name: str) -> Tenant:
    return Tenant.model_construct(id=tid, external_id=name, name=name.title(), status="active")


TENANTS = {b"Bearer fg-acme-key": _tenant("t-1", "acme"), b"Bearer fg-globex-key": _tenant("t-2", "globex")}


async def check_tenant(authorization: bytes | None, *, client: str | None = None) -> Principal:
    tenant = TENANTS.get(authorization or b"")
    if tenant is None:
        raise AuthenticationFailed("invalid API key")
    return Principal(key=None, tenant=tenant)  # type: ignore[arg-type]


def _line(tenant: str, tid: str, requests: int, charge: int, cost: int) -> UsageLine:
    return UsageLine(
        day=date(2026, 1, 2),
        tenant=tenant,
        tenant_id=tid,
        model="smollm2",
        requests=requests,
        ok=requests,
        fresh_tokens=10 * requests,
        cached_tokens=5 * requests,
        output_tokens=4 * requests,
        charge_micros=charge,
        cost_micros=cost,
        margin_micros=charge - cost,
    )


class FakeUsage:
    """Today's usage of two tenants; records which tenant each call asked for."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.fail: Exception | None = None

    async def __call__(self, tenant_id: str | None) -> UsageReport:
        self.calls.append(tenant_id)
        if self.fail is not None:
            raise self.fail
        lines = [_line("acme", "t-1", 3, 1_500_000, 400_000), _line("globex", "t-2", 7, 9_000_000, 1_000_000)]
        lines = [x for x in lines if tenant_id in (None, x.tenant_id)]
        totals = UsageTotals()
        for x in lines:
            totals.requests += x.requests
            totals.charge_micros += x.charge_micros
            totals.cost_micros += x.cost_micros
        day = date(2026, 1, 2)
        return UsageReport(since=day, until=day, currency="USD", policy="per_token", lines=lines, totals=totals)


@pytest.fixture
def setup() -> tuple[TestClient, TimeSeries, FakeUsage, GatewayMetrics]:
    metrics = GatewayMetrics()
    replica = Replica(id="engine-0", url="http://127.0.0.1:9", models={"smollm2"}, healthy=True, in_flight=2)
    replica.metrics = ReplicaMetrics(
        scraped_at=1e12, waiting=3, running=2, kv_usage=0.42, prefix_queries=100, prefix_hits=60
    )
    registry = ReplicaRegistry([replica, Replica(id="engine-1", url="http://127.0.0.1:10", last_error="refused")])
    ts = TimeSeries(metrics.registry, registry, step=5, window=900, clock=lambda: 1000.0)
    ts.sample(at=995.0)
    metrics.requests.labels("acme", "smollm2", "ok", "round_robin:turn").inc(10)
    metrics.rejected("acme", "rpm")
    ts.sample(at=1000.0)
    ts.record_decision("req-1", "acme", "smollm2", "engine-0", "round_robin:turn")
    usage = FakeUsage()
    app = make_api([dashboard_router(ts, registry, usage)], Credentials.of(ADMIN_KEY, None, check_tenant))
    return TestClient(app), ts, usage, metrics


def test_page_and_assets_come_from_the_gateway(setup: tuple[TestClient, Any, Any, Any]) -> None:
    client = setup[0]
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    assert '<script src="/dashboard/static/dashboard.js"' in html and "/dashboard/static/dashboard.css" in html
    js = client.get("/dashboard/static/dashboard.js")
    css = client.get("/dashboard/static/dashboard.css")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # No CDN: the only absolute URL anywhere is the SVG namespace, which is an identifier, never fetched.
    for text in (html, js.text, css.text):
        assert set(re.findall(r"https?://[^\s\"')]+", text)) <= {"http://www.w3.org/2000/svg"}
        # Names and messages are data: they go in as textContent, never parsed as HTML.
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", text)
    assert client.get("/dashboard/static/../dashboard.py").status_code == 404
    assert client.get("/dashboard/static/nope.js").status_code == 404


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, ACME, {"Authorization": ADMIN_KEY}])
def test_overview_needs_the_admin_key(setup: tuple[TestClient, Any, Any, Any], headers: dict[str, str]) -> None:
    resp = setup[0].get("/dashboard/api/overview", headers=headers)
    assert resp.status_code == 401
    assert "admin key" in resp.json()["error"]["message"]
    assert "globex" not in resp.text and "engine-0" not in resp.text


def test_overview_content(setup: tuple[TestClient, TimeSeries, FakeUsage, Any]) -> None:
    client, _, usage, _ = setup
    resp = client.get("/dashboard/api/overview", headers=ADMIN)
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["object"] == "dashboard.overview" and body["window"] == 900 and body["step"] == 5
    fleet = {r["id"]: r for r in body["fleet"]}
    assert fleet["engine-0"]["healthy"] and fleet["engine-0"]["in_flight"] == 2
    assert fleet["engine-0"]["queue"] == 3 and fleet["engine-0"]["kv"] == 0.42 and fleet["engine-0"]["models"]
    assert fleet["engine-0"]["cache_hit"] == 0.6  # idle: the engine's cumulative ratio
    assert not fleet["engine-1"]["healthy"] and fleet["engine-1"]["last_error"] == "refused"
    assert fleet["engine-1"]["kv"] is None and fleet["engine-1"]["queue"] is None
    tenants = {t["tenant"]: t for t in body["tenants"]}
    assert [t["tenant"] for t in body["tenants"]] == ["globex", "acme"]  # most spend first
    assert tenants["acme"]["requests_per_s"] == 2.0 and tenants["acme"]["throttles"] == 1
    assert tenants["acme"]["spend_today"] == "1.50" and tenants["acme"]["requests_today"] == 3
    assert tenants["acme"]["tokens_today"] == 3 * 19
    assert tenants["globex"]["spend_today"] == "9.00" and tenants["globex"]["requests_per_s"] == 0.0
    assert body["currency"] == "USD" and body["usage_error"] is None
    assert body["series"]["t"] == [995.0, 1000.0] and body["series"]["requests_per_s"] == [None, 2.0]
    assert body["decisions"][0]["request_id"] == "req-1"
    assert body["now"]["requests_per_s"] == 2.0
    assert usage.calls == [None]


def test_usage_is_cached_between_polls(setup: tuple[TestClient, Any, FakeUsage, Any]) -> None:
    client, _, usage, _ = setup
    for _ in range(3):
        assert client.get("/dashboard/api/overview", headers=ADMIN).status_code == 200
    assert usage.calls == [None]


def test_ledger_down_still_shows_the_fleet(setup: tuple[TestClient, Any, FakeUsage, Any]) -> None:
    client, _, usage, _ = setup
    usage.fail = OperationalError("select", {}, ConnectionRefusedError())
    body = client.get("/dashboard/api/overview", headers=ADMIN).json()
    assert body["usage_error"] == "usage ledger unavailable (OperationalError)"
    assert body["fleet"] and body["tenants"][0]["tenant"] == "acme"  # rates still known from the metrics
    page = client.get("/dashboard/api/tenant", headers=ACME).json()
    assert page["usage_today"] is None and page["usage_error"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, ADMIN])
def test_tenant_page_needs_a_tenant_key(setup: tuple[TestClient, Any, Any, Any], headers: dict[str, str]) -> None:
    resp = setup[0].get("/dashboard/api/tenant", headers=headers)
    assert resp.status_code == 401
    assert "acme" not in resp.text and "globex" not in resp.text


def test_tenant_sees_only_its_own_usage(setup: tuple[TestClient, Any, FakeUsage, Any]) -> None:
    client, _, usage, _ = setup
    # A tenant cannot ask for another: the query is ignored, the key decides.
    resp = client.get("/dashboard/api/tenant?tenant=globex&tenant_id=t-2", headers=ACME)
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["object"] == "dashboard.tenant" and body["tenant"] == "acme"
    assert usage.calls == ["t-1"]
    assert [x["tenant"] for x in body["usage_today"]["lines"]] == ["acme"]
    assert body["usage_today"]["totals"]["charge"] == "1.50"
    assert body["rates"] == {
        "requests_per_s": 2.0,
        "input_tokens_per_s": 0.0,
        "output_tokens_per_s": 0.0,
        "throttles": 1,
    }
    assert body["series"]["requests_per_s"] == [2.0]
    text = resp.text
    for hidden in ("globex", "t-2", "cost", "margin", "engine-0", "decisions", "fleet"):
        assert hidden not in text, hidden
    other = client.get("/dashboard/api/tenant", headers=GLOBEX).json()
    assert other["tenant"] == "globex" and other["rates"] is None  # no traffic in the window
    assert "acme" not in str(other)


# --- against a real gateway -------------------------------------------------------------------------------


def attach_dashboard(running: RunningGateway, clock: Any = None, usage_ttl: float = 0.0) -> TimeSeries:
    """Serve the dashboard on a running gateway, with a time series the test drives.

    The routes go first in the app's route list, so the test's own time series (sampled when the test says)
    answers even if the gateway already serves one. Routing decisions are recorded from the finished requests,
    standing in for the proxy's `record_decision` call. usage_ttl 0: the ledger's newest roll-ups show at once.
    """
    gw = running.gateway
    ts = TimeSeries(gw.metrics.registry, gw.registry, **({"clock": clock} if clock else {}))
    rating = Rating(gw.ledger.engine, tenant_names=gw.store.external_ids)
    lane = running.server.config.app
    assert isinstance(lane, FastLane)  # the completion paths' fast lane; the FastAPI app sits behind it
    app = lane.app
    # The app's own credentials (the admin key, the gateway's tenant keys) guard these routes too.
    routes = dashboard_router(ts, gw.registry, ledger_usage_today(gw.ledger, rating), usage_ttl=usage_ttl).routes
    app.router.routes[:0] = routes
    observe = gw.metrics.observe

    def observe_and_record(outcome: Any, route: str, ended_at: float) -> None:
        observe(outcome, route, ended_at)
        if outcome.replica is not None:
            ts.record_decision(outcome.request_id, outcome.tenant_name, outcome.model, outcome.replica.id, route)

    gw.metrics.observe = observe_and_record  # type: ignore[method-assign]
    return ts


async def add_tenant(http: aiohttp.ClientSession, gw: RunningGateway, name: str, **spec: Any) -> dict[str, str]:
    """Create a tenant through the admin API; its key's auth headers."""
    await http.put(f"{gw.url}/admin/tenants/{name}", json=spec, headers=gw.admin_headers)
    async with http.post(f"{gw.url}/admin/tenants/{name}/keys", json={}, headers=gw.admin_headers) as r:
        return {"Authorization": f"Bearer {(await r.json())['key']}"}


async def set_prices(gw: RunningGateway) -> None:
    """A price book, so spend is not zero."""
    rating = Rating(gw.gateway.ledger.engine)
    await rating.create_book(PriceBookSpec.model_validate(BOOK))


@pytest.fixture
async def live() -> AsyncIterator[RunningGateway]:
    async with gateway_with_fake_engine() as running:
        yield running


async def test_real_gateway_overview_and_tenant_page(live: RunningGateway) -> None:
    ts = attach_dashboard(live)
    await set_prices(live)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        acme = await add_tenant(http, live, "acme", rpm=2)
        ts.sample()
        for headers in (live.headers, live.headers, acme, acme, acme):  # acme's third is over its 2 requests/min
            async with http.post(f"{live.url}/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
        ts.sample()
        async with http.get(f"{live.url}/dashboard/api/overview", headers=live.headers) as r:
            assert r.status == 401  # a tenant key is not the admin key
        for _ in range(100):  # the ledger receives events asynchronously (flush interval)
            async with http.get(f"{live.url}/dashboard/api/overview", headers=live.admin_headers) as r:
                assert r.status == 200
                overview = await r.json()
            if sum(t["requests_today"] for t in overview["tenants"]) >= 5:
                break
            await asyncio.sleep(0.05)
        async with http.get(f"{live.url}/dashboard/api/tenant", headers=acme) as r:
            assert r.status == 200
            page = await r.json()
        async with http.get(f"{live.url}/dashboard", headers={}) as r:
            assert r.status == 200 and "fleetgate" in await r.text()
    assert [r["id"] for r in overview["fleet"]] == ["engine-0"] and overview["fleet"][0]["healthy"]
    tenants = {t["tenant"]: t for t in overview["tenants"]}
    assert tenants["demo"]["requests_today"] == 2 and tenants["acme"]["throttles"] == 1
    assert float(tenants["demo"]["spend_today"]) > 0 and overview["currency"] == "USD"
    assert overview["series"]["requests_per_s"][-1] > 0 and overview["series"]["cache_hit_ratio"][-1] == pytest.approx(
        3 / 7
    )
    assert {d["tenant"] for d in overview["decisions"]} == {"demo", "acme"}
    assert page["tenant"] == "acme" and page["rates"]["throttles"] == 1
    assert {x["tenant"] for x in page["usage_today"]["lines"]} == {"acme"}
    assert "demo" not in str(page) and "cost" not in str(page)
    assert datetime.fromtimestamp(overview["generated_at"], UTC).date() == datetime.now(UTC).date()


async def test_wired_gateway_serves_the_dashboard(live: RunningGateway) -> None:
    """/dashboard on every gateway, sampled by its lifespan, decisions from the proxy."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        async with http.post(f"{live.url}/v1/chat/completions", json=body, headers=live.headers) as r:
            assert r.status == 200
            request_id = r.headers["x-request-id"]
        async with http.get(f"{live.url}/dashboard") as r:
            assert r.status == 200 and r.headers["content-security-policy"]
        async with http.get(f"{live.url}/dashboard/api/overview", headers=live.headers) as r:
            assert r.status == 401
        async with http.get(f"{live.url}/dashboard/api/overview", headers=live.admin_headers) as r:
            assert r.status == 200
            overview = await r.json()
        async with http.get(f"{live.url}/dashboard/api/tenant", headers=live.headers) as r:
            assert r.status == 200 and (await r.json())["tenant"] == "demo"
    assert overview["series"]["t"], "the lifespan starts the sampler (its first sample is immediate)"
    decision = overview["decisions"][0]
    assert decision["request_id"] == request_id and decision["replica"] == "engine-0"
    assert decision["tenant"] == "demo" and decision["model"] == "smollm2" and ":" in decision["route"]
