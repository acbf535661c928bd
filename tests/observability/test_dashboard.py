"""What the dashboard shows, apart from how it is served (tests/api/test_dashboard.py): today's usage is cached
briefly, and a ledger that is down is reported, not raised."""

from __future__ import annotations

from datetime import date

from sqlalchemy.exc import OperationalError

from fleetgate.billing.report import UsageReport, UsageTotals
from fleetgate.domain.errors import UpstreamUnavailable
from fleetgate.observability.dashboard import UsageCache, usage_or_error

DAY = date(2026, 1, 2)


class CountingUsage:
    """Today's usage (empty); records which tenant each call asked for, or fails with `fail`."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.fail: Exception | None = None

    async def __call__(self, tenant_id: str | None) -> UsageReport:
        self.calls.append(tenant_id)
        if self.fail is not None:
            raise self.fail
        return UsageReport(since=DAY, until=DAY, currency="USD", policy="per_token", lines=[], totals=UsageTotals())


async def test_usage_cache_expires() -> None:
    usage = CountingUsage()
    now = [0.0]
    cache = UsageCache(usage, ttl=5.0, clock=lambda: now[0])
    await cache.get(None)
    await cache.get("t-1")
    now[0] = 4.9
    await cache.get(None)
    now[0] = 5.0
    await cache.get(None)
    assert usage.calls == [None, "t-1", None]


async def test_a_ledger_that_is_down_is_reported_not_raised() -> None:
    usage = CountingUsage()
    cache = UsageCache(usage, ttl=0.0)
    report, error = await usage_or_error(cache, "t-1")
    assert report is not None and report.currency == "USD" and error is None
    usage.fail = OperationalError("select", {}, ConnectionRefusedError())
    assert await usage_or_error(cache, "t-1") == (None, "usage ledger unavailable (OperationalError)")
    usage.fail = UpstreamUnavailable("usage ledger unavailable (OSError); retry shortly")
    assert await usage_or_error(cache, None) == (None, "usage ledger unavailable (OSError); retry shortly")
