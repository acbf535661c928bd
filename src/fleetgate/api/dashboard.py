"""The web dashboard: `/dashboard` (a static page served by the gateway) and the JSON it polls.

`GET /dashboard/api/overview` needs the admin key: the fleet, every tenant's traffic and spend today, the last
15 minutes of charts and the recent routing decisions (`fleetgate top` reads it too). `GET /dashboard/api/tenant`
takes a tenant key and answers only about that tenant. The page itself holds no data, so it is served without a
key (a browser cannot send a Bearer header on navigation); the user pastes a key, which stays in sessionStorage.
What the JSON says is observability.dashboard's.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter, Depends
from starlette.responses import Response

from fleetgate.api.app import GET
from fleetgate.api.auth import Tenant, admin
from fleetgate.domain.errors import NotFound
from fleetgate.fleet.replicas import ReplicaRegistry
from fleetgate.observability.dashboard import (
    UsageCache,
    UsageToday,
    build_overview,
    build_tenant_page,
    usage_or_error,
)
from fleetgate.observability.timeseries import TimeSeries

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Everything comes from the gateway itself: no CDN, no inline script, no framing.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _asset(name: str) -> bytes:
    return resources.files("fleetgate.api").joinpath("static", name).read_bytes()


def _json(body: dict[str, Any]) -> Response:
    # no-store: the answer carries tenant data and must not sit in a shared cache.
    return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})


def dashboard_router(
    ts: TimeSeries, replicas: ReplicaRegistry, usage_today: UsageToday, *, usage_ttl: float = 5.0
) -> APIRouter:
    """`/dashboard`, its static assets and its two JSON endpoints."""
    router = APIRouter()
    page = _asset("dashboard.html")
    assets = {name: (_asset(name), media) for name, media in ASSETS.items()}  # read once: they never change
    usage = UsageCache(usage_today, usage_ttl)

    @router.api_route("/dashboard", methods=GET)
    async def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @router.api_route("/dashboard/static/{name}", methods=GET)
    async def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFound(f"no dashboard asset {name!r}")
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)

    @router.api_route("/dashboard/api/overview", methods=GET, dependencies=[Depends(admin)])
    async def overview() -> Response:
        report, error = await usage_or_error(usage, None)
        return _json(build_overview(ts, replicas, report, error))

    @router.api_route("/dashboard/api/tenant", methods=GET)
    async def tenant(principal: Tenant) -> Response:
        # The tenant comes from the key, never from the query: one tenant cannot ask for another's page.
        report, error = await usage_or_error(usage, principal.tenant.id)
        return _json(build_tenant_page(ts, principal.tenant, report, error))

    return router
