"""Usage over HTTP: `GET /v1/usage` (the calling tenant's own, without operator cost) and `GET /admin/usage`.

Both read the daily roll-ups (never raw events) and rate them like `fleetgate usage report`. Days are UTC dates,
`since` and `until` both inclusive; the default is the current month to date.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Query
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from fleetgate.api.app import GET
from fleetgate.api.auth import Tenant
from fleetgate.api.errors import error_responses
from fleetgate.billing.rating import Rating
from fleetgate.billing.report import UsageReport, usage_report
from fleetgate.domain.errors import InvalidRequest, NotFound, UpstreamUnavailable
from fleetgate.metering.ledger import MAX_PAGE, SqlLedger

MAX_DAYS = 400  # a bound on one answer; roll-ups make even this cheap


def window(since: date | None, until: date | None) -> tuple[date, date]:
    """The report period: defaults to this month to date; 400 days at most."""
    today = datetime.now(UTC).date()
    start = since or (until or today).replace(day=1)
    end = until or today
    if start > end:
        raise InvalidRequest(f"since ({start}) is after until ({end})", param="since")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"at most {MAX_DAYS} days per request: narrow since/until", param="since")
    return start, end


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name}: expected a date like 2026-11-01, got {value!r}", param=name) from None


def _unavailable(exc: Exception) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"usage ledger unavailable ({type(exc).__name__}); retry shortly", retry_after=5)


def usage_router(ledger: SqlLedger, rating: Rating) -> APIRouter:
    """`GET /v1/usage?since=&until=`: the caller's own usage and charges, found by its API key."""
    router = APIRouter()

    # The dates are read as text and checked here, so a bad one is a 400 naming the parameter (param=since).
    @router.api_route("/v1/usage", methods=GET)
    async def own_usage(principal: Tenant, since: str | None = None, until: str | None = None) -> Response:
        start, end = window(_day(since, "since"), _day(until, "until"))
        tenant = principal.tenant
        try:
            # The tenant filter comes from the key, never from the query: one tenant cannot ask for another.
            report = await usage_report(
                ledger, rating, since=start, until=end, tenant_id=tenant.id, names={tenant.id: tenant.external_id}
            )
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable(exc) from None
        body = {"object": "usage.report", "tenant": tenant.external_id, **report.tenant_view()}
        return Response(orjson.dumps(body), media_type="application/json")

    return router


def admin_usage_router(ledger: SqlLedger, rating: Rating) -> APIRouter:
    """`GET /usage` (every tenant, with cost and margin) and `GET /usage/events` for the admin app."""
    router = APIRouter(tags=["usage"], responses=error_responses(503))  # 503: the ledger database is down

    @router.get(
        "/usage",
        response_model=UsageReport,
        summary="Usage per tenant, model and day, rated",
        responses=error_responses(404),  # an unknown price book
    )
    async def admin_usage(
        since: date | None = Query(None, description="first UTC day (default: first of this month)"),
        until: date | None = Query(None, description="last UTC day, inclusive (default: today)"),
        tenant: str | None = Query(None, description="only this tenant (external id)"),
        price_book: int | None = Query(
            None, ge=1, le=2**31 - 1, description="re-rate the period with this price book version"
        ),
    ) -> UsageReport:
        start, end = window(since, until)
        try:
            tenant_id = await rating.tenant_id(tenant) if tenant else None
            return await usage_report(ledger, rating, since=start, until=end, tenant_id=tenant_id, version=price_book)
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable(exc) from None

    @router.get("/usage/events", summary="Raw usage events, oldest first, one page at a time")
    async def admin_events(
        tenant: str | None = Query(None, description="only this tenant (external id)"),
        since: datetime | None = Query(None, description="events started at or after (ISO time)"),
        until: datetime | None = Query(None, description="events started before (ISO time)"),
        limit: int = Query(100, ge=1, le=MAX_PAGE),
        after: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> dict[str, Any]:
        try:
            tenant_id = await rating.tenant_id(tenant) if tenant else None
            page = await ledger.events(
                tenant_id=tenant_id,
                since=_ts(since),
                until=_ts(until),
                limit=limit,
                after=after,
            )
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable(exc) from None
        return {"data": [e.to_dict() for e in page.events], "next_cursor": page.next_cursor}

    @router.get("/usage/events/{event_id}", summary="One usage event", responses=error_responses(404))
    async def admin_event(event_id: str) -> dict[str, Any]:
        try:
            event = await ledger.get(event_id)
        except (SQLAlchemyError, OSError) as exc:
            raise _unavailable(exc) from None
        if event is None:
            raise NotFound(f"no usage event {event_id!r}")
        return event.to_dict()

    return router


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
