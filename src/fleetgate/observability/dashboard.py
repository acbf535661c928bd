"""What the web dashboard shows (api/dashboard.py serves it): the fleet, the tenants, the time series.

`build_overview` is the admin's whole view (`fleetgate top` reads it too); `build_tenant_page` is one tenant's own
view of itself, without operator cost. Today's usage comes from the ledger through a short cache, and a ledger that
is down leaves the live view useful: charts and fleet still show, usage says why it is missing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from fleetgate.billing.rating import Rating, format_money
from fleetgate.billing.report import UsageReport, usage_report
from fleetgate.domain.errors import ApiError
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.metering.ledger import SqlLedger
from fleetgate.observability.timeseries import TimeSeries
from fleetgate.tenancy.models import Tenant

UsageToday = Callable[[str | None], Awaitable[UsageReport]]  # today's rated usage of one tenant id, or of all (None)

STALE_AFTER = 10.0  # seconds: an engine scrape older than this is shown as unknown, not as the last value
DECISIONS_SHOWN = 50


def ledger_usage_today(ledger: SqlLedger, rating: Rating) -> UsageToday:
    """A UsageToday that rates today's (UTC) roll-ups from the ledger."""

    async def today(tenant_id: str | None) -> UsageReport:
        day = datetime.now(UTC).date()
        return await usage_report(ledger, rating, since=day, until=day, tenant_id=tenant_id)

    return today


class UsageCache:
    """Today's usage, re-read at most every `ttl` seconds per key: many open dashboards cost the ledger one query."""

    def __init__(self, usage: UsageToday, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._usage = usage
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str | None, tuple[float, UsageReport]] = {}

    async def get(self, tenant_id: str | None) -> UsageReport:
        """Today's usage of one tenant id (or of all: None)."""
        now = self._clock()
        hit = self._entries.get(tenant_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        report = await self._usage(tenant_id)
        if len(self._entries) >= 1000:  # one entry per tenant that looked recently: bound it crudely
            self._entries.clear()
        self._entries[tenant_id] = (now, report)
        return report


def _ratio(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def fleet_rows(replicas: ReplicaRegistry, ts: TimeSeries, now: float | None = None) -> list[dict[str, Any]]:
    """One row per replica: health, in-flight, engine queue, KV (or slot) use, cache hit ratio, tokens/s."""
    now = time.monotonic() if now is None else now
    rows = []
    for r in replicas.all():
        rows.append({**_replica_row(r, ts, now), "models": sorted(r.models)})
    return rows


def _replica_row(r: Replica, ts: TimeSeries, now: float) -> dict[str, Any]:
    m = r.metrics
    fresh = m is not None and m.fresh(now, STALE_AFTER)
    rates = ts.replica_rates(r.id) if fresh else None
    hit = rates.cache_hit_ratio if rates is not None else None
    if hit is None and fresh and m is not None:
        hit = m.prefix_hit_ratio  # idle this step: the engine's cumulative ratio is the best answer there is
    return {
        "id": r.id,
        "url": r.url,
        "kind": r.kind,
        "healthy": r.healthy,
        "last_error": r.last_error,
        "in_flight": r.in_flight,
        "queue": m.waiting if fresh and m is not None else None,
        "running": m.running if fresh and m is not None else None,
        "kv": _ratio(m.pressure) if fresh and m is not None else None,
        "cache_hit": _ratio(hit),
        "tokens_per_s": rates.tokens_per_s if rates is not None else None,
        "metrics_age": round(now - m.scraped_at, 1) if m is not None else None,
    }


def tenant_rows(ts: TimeSeries, report: UsageReport | None) -> list[dict[str, Any]]:
    """Every tenant with traffic now or usage today: rates from the time series, spend from the ledger."""
    rows: dict[str, dict[str, Any]] = {}

    def row(name: str) -> dict[str, Any]:
        found = rows.get(name)
        if found is None:
            found = rows[name] = {
                "tenant": name,
                "requests_per_s": 0.0,
                "input_tokens_per_s": 0.0,
                "output_tokens_per_s": 0.0,
                "throttles": 0,
                "requests_today": 0,
                "tokens_today": 0,
                "spend_today_micros": 0,
            }
        return found

    for name, rates in ts.tenant_rates().items():
        entry = row(name)
        entry["requests_per_s"] = round(rates.requests_per_s, 3)
        entry["input_tokens_per_s"] = round(rates.input_tokens_per_s, 1)
        entry["output_tokens_per_s"] = round(rates.output_tokens_per_s, 1)
        entry["throttles"] = int(rates.throttles)
    for line in report.lines if report is not None else []:
        entry = row(line.tenant)
        entry["requests_today"] += line.requests
        entry["tokens_today"] += line.fresh_tokens + line.cached_tokens + line.output_tokens
        entry["spend_today_micros"] += line.charge_micros
    for entry in rows.values():
        entry["spend_today"] = format_money(entry["spend_today_micros"])
    return sorted(rows.values(), key=lambda x: (-x["spend_today_micros"], -x["requests_per_s"], x["tenant"]))


def build_overview(
    ts: TimeSeries, replicas: ReplicaRegistry, report: UsageReport | None, usage_error: str | None = None
) -> dict[str, Any]:
    """The admin overview: fleet, tenants, time series, recent decisions."""
    latest = ts.latest()
    return {
        "object": "dashboard.overview",
        "generated_at": ts.clock(),
        "step": ts.step,
        "window": ts.window,
        "fleet": fleet_rows(replicas, ts),
        "tenants": tenant_rows(ts, report),
        "currency": report.currency if report is not None else None,
        "usage_error": usage_error,
        "now": {
            "in_flight": latest.in_flight if latest else 0,
            "queue_depth": latest.queue_depth if latest else 0,
            "requests_per_s": latest.requests_per_s if latest else None,
            "output_tokens_per_s": latest.output_tokens_per_s if latest else None,
        },
        "series": ts.series(),
        "decisions": ts.decisions_json(DECISIONS_SHOWN),
    }


def build_tenant_page(
    ts: TimeSeries, tenant: Tenant, report: UsageReport | None, usage_error: str | None = None
) -> dict[str, Any]:
    """One tenant's own page: its usage and charges today (no operator cost), its traffic now."""
    rates = ts.tenant_rates().get(tenant.external_id)
    return {
        "object": "dashboard.tenant",
        "generated_at": ts.clock(),
        "tenant": tenant.external_id,
        "name": tenant.name,
        "usage_today": report.tenant_view() if report is not None else None,
        "usage_error": usage_error,
        "rates": None
        if rates is None
        else {
            "requests_per_s": round(rates.requests_per_s, 3),
            "input_tokens_per_s": round(rates.input_tokens_per_s, 1),
            "output_tokens_per_s": round(rates.output_tokens_per_s, 1),
            "throttles": int(rates.throttles),
        },
        "series": ts.tenant_series(tenant.external_id),
    }


async def usage_or_error(cache: UsageCache, tenant_id: str | None) -> tuple[UsageReport | None, str | None]:
    """Today's usage, or why the ledger could not give it (the live view stays useful while the ledger is down)."""
    try:
        return await cache.get(tenant_id), None
    except ApiError as exc:
        return None, exc.message
    except (SQLAlchemyError, OSError) as exc:
        return None, f"usage ledger unavailable ({type(exc).__name__})"
