"""Usage reports: daily roll-ups per tenant, model and day, rated under the price book in force (or one forced).

The same report feeds `fleetgate usage report`, `GET /admin/usage` and (without cost and margin) `GET /v1/usage`.
A day on which another book came into force is read from its events instead (metering/book_split.py), split at the
change: each part is rated with its own book, as the budget counter charged it.

Amounts are summed exactly (prices.py) and rounded to micro-units once per line and once per total, so a total is
the exact sum of its usage rounded, which is what the budget counter holds; lines may add up to it within a
micro-unit per line.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, computed_field

from fleetgate.billing.book_split import rated_rows
from fleetgate.billing.prices import micros
from fleetgate.billing.rating import Charge, Rating, format_money, ratable
from fleetgate.domain.errors import InvalidRequest
from fleetgate.metering.ledger import DailyUsage, SqlLedger


class UsageTotals(BaseModel):
    """Counts and money summed over usage: money in micro-units, with decimal-text twins for people."""

    requests: int = 0
    ok: int = 0
    aborts: int = 0
    errors: int = 0
    timeouts: int = 0
    rejected: int = 0
    lost: int = 0
    prompt_tokens: int = 0
    fresh_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    fresh_input_micros: int = 0
    cached_input_micros: int = 0
    output_micros: int = 0
    charge_micros: int = 0
    cost_micros: int = 0
    margin_micros: int = 0
    unpriced_requests: int = 0
    _exact: list[int] = PrivateAttr(default_factory=lambda: [0, 0, 0])  # fresh, cached, output (prices.py units)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def charge(self) -> str:
        """What the tenant is charged, as decimal text."""
        return format_money(self.charge_micros)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cost(self) -> str:
        """What serving it cost the operator, as decimal text."""
        return format_money(self.cost_micros)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def margin(self) -> str:
        """Charge minus cost, as decimal text."""
        return format_money(self.margin_micros)

    def add(self, row: DailyUsage, charge: Charge | None) -> None:
        """Add one roll-up row and its charge (None = no price book at all)."""
        for name in ("requests", "ok", "aborts", "errors", "timeouts", "rejected", "lost"):
            setattr(self, name, getattr(self, name) + getattr(row, name))
        self.prompt_tokens += row.prompt_tokens
        self.fresh_tokens += row.fresh_tokens
        self.cached_tokens += row.cached_tokens
        self.output_tokens += row.completion_tokens
        if charge is None or not charge.priced:
            self.unpriced_requests += row.requests
        if charge is not None:
            exact = self._exact
            for i, amount in enumerate(charge.exact):
                exact[i] += amount
            self.fresh_input_micros, self.cached_input_micros, self.output_micros = (micros(x) for x in exact)
            self.charge_micros = micros(sum(exact))
            self.cost_micros += charge.cost
            self.margin_micros = self.charge_micros - self.cost_micros


class UsageLine(UsageTotals):
    """Usage of one tenant on one model ("base" or "base:adapter") on one UTC day."""

    day: date
    tenant: str
    tenant_id: str
    model: str
    price_book_version: int | None = None


class UsageReport(BaseModel):
    """Usage per tenant, model and day, rated: what the CLI report, /admin/usage and /v1/usage show."""

    since: date | None
    until: date | None
    currency: str | None
    policy: str
    price_book_version: int | None = Field(None, description="set when the period was re-rated with one version")
    lines: list[UsageLine]
    totals: UsageTotals

    def tenant_view(self) -> dict[str, Any]:
        """What a tenant may see of its own report: no operator cost or margin, no internal ids."""
        hidden = {"cost", "cost_micros", "margin", "margin_micros"}
        return self.model_dump(mode="json", exclude={"lines": {"__all__": {*hidden, "tenant_id"}}, "totals": hidden})


async def usage_report(
    ledger: SqlLedger,
    rating: Rating,
    *,
    since: date | None = None,
    until: date | None = None,
    tenant_id: str | None = None,
    version: int | None = None,
    names: Mapping[str, str] | None = None,
) -> UsageReport:
    """Rate the daily roll-ups of [since, until]: each day under the book in effect then, or all under `version`."""
    rows = await ledger.daily(since=since, until=until, tenant_id=tenant_id)
    names = await rating.tenant_names() if names is None else names
    forced = await rating.book(version) if version is not None else None
    books = [forced] if forced is not None else await rating.books()
    lines: dict[tuple[date, str, str, int | None], UsageLine] = {}
    totals = UsageTotals()
    currencies: set[str] = set()
    for row, book in await rated_rows(ledger, rows, books, tenant_id):
        tenant = names.get(row.tenant_id, row.tenant_id)
        charge = rating.charge(ratable(row, tenant), book) if book is not None else None
        model = f"{row.model}:{row.adapter}" if row.adapter else row.model
        version_used = None if book is None else book.version
        line = lines.get((row.day, row.tenant_id, model, version_used))
        if line is None:
            line = UsageLine(
                day=row.day, tenant=tenant, tenant_id=row.tenant_id, model=model, price_book_version=version_used
            )
            lines[(row.day, row.tenant_id, model, version_used)] = line
        line.add(row, charge)
        totals.add(row, charge)
        if book is not None:
            currencies.add(book.currency)
    if len(currencies) > 1:
        raise InvalidRequest(
            f"price books in this period use different currencies ({', '.join(sorted(currencies))}): "
            "re-rate the period with one version"
        )
    ordered = sorted(lines.values(), key=lambda x: (x.day, x.tenant, x.model, x.price_book_version or 0))
    currency = currencies.pop() if currencies else (books[-1].currency if books else None)
    return UsageReport(
        since=since,
        until=until,
        currency=currency,
        policy=rating.policy.name,
        price_book_version=version,
        lines=ordered,
        totals=totals,
    )
