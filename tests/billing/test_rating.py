"""Rating: hand-checked charges under two price-book versions, overrides, adapter fallback, and re-rating that
never touches an event. Every expected amount below was worked out by hand (micro-units, half up)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from fleetgate.billing.prices import micros
from fleetgate.billing.rating import (
    Charge,
    ModelRate,
    NoCacheDiscount,
    PerToken,
    PriceBook,
    PriceBookSpec,
    Rating,
    book_at,
    book_changes,
    book_from_spec,
    format_money,
    make_policy,
    ratable,
    rate,
    to_micros,
)
from fleetgate.billing.report import usage_report
from fleetgate.db.schema import price_books, usage_daily, usage_events
from fleetgate.domain.errors import InvalidRequest, NotFound
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.ledger import DailyUsage, SqlLedger

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC).timestamp()
NAMES = {"tid-acme": "acme", "tid-bravo": "bravo"}

BOOK1 = {
    "currency": "USD",
    "note": "launch prices",
    "prices": {"smollm2": {"input": 0.10, "cached_input": 0.05, "output": 0.20}},
    "gpu_costs": {"cpu": {"per_hour": 0.36}},
}
BOOK2 = {
    "currency": "USD",
    "prices": {
        "smollm2": {"input": 0.20, "cached_input": 0.02, "output": 0.50},
        "smollm2:support-bot": {"input": 0.30, "cached_input": 0.03, "output": 0.60},
        "*": {"input": "1.00", "output": 2},  # cached_input defaults to input
    },
    "tenant_overrides": {"acme": {"smollm2": {"input": 0.05, "cached_input": 0.01, "output": 0.10}}},
    "gpu_costs": {"cpu": {"per_1m_tokens": 0.03}},
}


def event(
    event_id: str, tenant: str, model: str, prompt: int, cached: int, out: int, busy: float, **kw: Any
) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        tenant_id=tenant,
        key_id="k",
        model=model,
        adapter=kw.get("adapter"),
        replica_id="local-0",
        engine="llamacpp",
        gpu_type=kw.get("gpu_type", "cpu"),
        started_at=T0,
        first_token_at=None,
        ended_at=T0 + busy,
        prompt_tokens=prompt,
        cached_tokens=cached,
        completion_tokens=out,
        status="ok",
        usage_source="engine",
        stream=False,
    )


E1 = event("e1", "tid-acme", "smollm2", 1000, 400, 500, 2.0)
E2 = event("e2", "tid-bravo", "smollm2", 1_234_567, 234_567, 98_765, 3600.0, adapter="support-bot")
E3 = event("e3", "tid-bravo", "mystery", 10, 0, 10, 1.0, gpu_type=None)


def book(version: int, spec: dict[str, Any]) -> PriceBook:
    return book_from_spec(PriceBookSpec.model_validate(spec), version, datetime(2026, 11, 1, tzinfo=UTC))


def charge(e: UsageEvent, b: PriceBook) -> Charge:
    return rate(ratable(e, NAMES.get(e.tenant_id, e.tenant_id)), b, PerToken())


def test_version_1_by_hand() -> None:
    b1 = book(1, BOOK1)
    # fresh 600 x 0.10/1M = 60 micros; cached 400 x 0.05/1M = 20; output 500 x 0.20/1M = 100; 2 s x 0.36/h = 200.
    assert charge(E1, b1) == Charge("e1", 1, 60, 20, 100, 180, 200, -20)
    # Adapter without its own price: the base model's. fresh 1,000,000 x 0.10 = 100000; cached 234,567 x 0.05
    # = 11728.35 -> 11728; output 98,765 x 0.20 = 19753; one busy hour at 0.36 = 360000.
    assert charge(E2, b1) == Charge("e2", 1, 100_000, 11_728, 19_753, 131_481, 360_000, -228_519)
    # No price for "mystery" and no "*": charged nothing, flagged unpriced; no gpu_type, no cost.
    assert charge(E3, b1) == Charge("e3", 1, 0, 0, 0, 0, 0, 0, priced=False)


def test_version_2_by_hand_with_override_adapter_price_and_default() -> None:
    b2 = book(2, BOOK2)
    # acme's override: 600 x 0.05 = 30; 400 x 0.01 = 4; 500 x 0.10 = 50; cost 1500 tokens x 0.03/1M = 45.
    assert charge(E1, b2) == Charge("e1", 2, 30, 4, 50, 84, 45, 39)
    # "smollm2:support-bot": 1,000,000 x 0.30 = 300000; 234,567 x 0.03 = 7037.01 -> 7037; 98,765 x 0.60 = 59259;
    # cost 1,333,332 tokens x 0.03/1M = 39999.96 -> 40000.
    assert charge(E2, b2) == Charge("e2", 2, 300_000, 7_037, 59_259, 366_296, 40_000, 326_296)
    # "*": 10 x 1.00 = 10; output 10 x 2.00 = 20.
    assert charge(E3, b2) == Charge("e3", 2, 10, 0, 20, 30, 0, 30)


def test_lookup_order_overrides_and_adapter_fallback() -> None:
    r = {n: ModelRate(i, i, i) for i, n in enumerate(["base", "base:lora", "*"], start=1)}
    b = PriceBook(3, datetime.now(UTC), "USD", r, {"vip": {"base": ModelRate(9, 9, 9)}}, {})
    assert b.rate_for("base", "lora", "anyone") == r["base:lora"]
    assert b.rate_for("base", "other", "anyone") == r["base"]  # unknown adapter: base price
    assert b.rate_for("base:other", None, "anyone") == r["base"]  # adapter named inside the model
    assert b.rate_for("else", None, "anyone") == r["*"]
    assert b.rate_for("base", "lora", "vip") == ModelRate(9, 9, 9)  # a tenant's override wins over global prices
    assert b.rate_for("else", None, "vip") == r["*"]
    assert PriceBook(4, datetime.now(UTC), "USD", {}, {}, {}).rate_for("base", None, "x") is None


def test_no_cache_discount_policy_and_registry() -> None:
    usage = ratable(E1, "acme")
    # cached 400 charged at the input rate 0.10: 40 instead of 20.
    assert rate(usage, book(1, BOOK1), NoCacheDiscount()).total == 60 + 40 + 100
    assert make_policy("no_cache_discount").name == "no_cache_discount"
    with pytest.raises(InvalidRequest, match="per_token"):
        make_policy("nope")


def test_an_event_and_its_days_roll_up_are_rated_alike() -> None:
    row = DailyUsage(
        day=date(2026, 11, 2), tenant_id=E2.tenant_id, model=E2.model, adapter=E2.adapter, gpu_type=E2.gpu_type,
        requests=1, prompt_tokens=E2.prompt_tokens, cached_tokens=E2.cached_tokens,
        completion_tokens=E2.completion_tokens, busy_seconds=3600.0, ok=1, aborts=0, errors=0, timeouts=0,
        rejected=0, lost=0,
    )  # fmt: skip
    by_event, by_row = ratable(E2, "bravo"), ratable(row, "bravo")
    assert (by_event.key, by_row.key) == ("e2", "2026-11-02|tid-bravo|smollm2|support-bot|cpu")
    assert replace(by_event, key=by_row.key) == by_row
    lost = replace(E1, ended_at=E1.started_at - 5)  # a clock step back: busy time is never negative
    assert ratable(lost, "acme").busy_seconds == 0.0


def test_money_parsing_and_printing() -> None:
    assert to_micros("0.1") == to_micros(0.1) == 100_000
    assert to_micros(2) == 2_000_000
    for bad in (1e-7, "0.0000001", -1, "abc", True, "inf"):
        with pytest.raises(ValueError):
            to_micros(bad)
    assert [format_money(m) for m in (0, 1_500_000, 12, 1_234_500, -228_519, 7_000_001)] == [
        "0.00",
        "1.50",
        "0.000012",
        "1.2345",
        "-0.228519",
        "7.000001",
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"gpu_costs": {"cpu": {"per_hour": 1, "per_1m_tokens": 1}}},
        {"gpu_costs": {"cpu": {}}},
        {"currency": "usd"},
        {"prices": {}},
        {"prices": {"m": {"input": 1}}},
        {"surprise": 1},
    ],
)
def test_price_book_spec_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PriceBookSpec.model_validate({**BOOK1, **change})


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[tuple[SqlLedger, Rating]]:
    ledger = await SqlLedger.open(db_url)

    async def names() -> dict[str, str]:
        return NAMES

    yield ledger, Rating(ledger.engine, tenant_names=names)
    await ledger.close()


async def _snapshot(ledger: SqlLedger) -> list[list[Any]]:
    async with ledger.engine.connect() as conn:
        events = (await conn.execute(select(usage_events).order_by(usage_events.c.event_id))).all()
        daily = (await conn.execute(select(usage_daily).order_by(*usage_daily.primary_key.columns))).all()
    return [[tuple(r) for r in events], [tuple(r) for r in daily]]


async def test_rerating_changes_charges_never_events(stores: tuple[SqlLedger, Rating]) -> None:
    ledger, rating = stores
    assert await rating.book() is None
    await ledger.insert([E1, E2, E3])
    v1 = await rating.create_book(PriceBookSpec.model_validate(BOOK1))
    v2 = await rating.create_book(PriceBookSpec.model_validate(BOOK2))
    assert (v1.version, v2.version) == (1, 2)
    before = await _snapshot(ledger)
    period = {"since": date(2026, 11, 1), "until": date(2026, 11, 30)}

    one = await usage_report(ledger, rating, version=1, **period)
    # Sums of the per-event figures above: 180 + 131481 + 0; cost 200 + 360000; margin -20 - 228519.
    assert (one.totals.charge_micros, one.totals.cost_micros, one.totals.margin_micros) == (131_661, 360_200, -228_539)
    assert one.totals.unpriced_requests == 1 and one.totals.charge == "0.131661"
    two = await usage_report(ledger, rating, version=2, **period)
    # 84 + 366296 + 30; cost 45 + 40000 + 0; margin 39 + 326296 + 30.
    assert (two.totals.charge_micros, two.totals.cost_micros, two.totals.margin_micros) == (366_410, 40_045, 326_365)
    assert two.totals.unpriced_requests == 0
    by_line = {(x.tenant, x.model): x.charge_micros for x in two.lines}
    assert by_line == {("acme", "smollm2"): 84, ("bravo", "smollm2:support-bot"): 366_296, ("bravo", "mystery"): 30}
    assert await _snapshot(ledger) == before  # re-rating wrote nothing
    assert (await rating.book(1)) == v1  # and an older version is unchanged by the newer one
    with pytest.raises(NotFound):
        await usage_report(ledger, rating, version=9, **period)

    # Unforced, each day takes the newest book created by then; days before any book take the oldest.
    effective = await usage_report(ledger, rating, **period)
    assert effective.totals.charge_micros == 131_661 and {x.price_book_version for x in effective.lines} == {1}
    today = datetime.now(UTC)
    now = today.timestamp()
    await ledger.insert([replace(E1, event_id="e4", started_at=now, ended_at=now + 2)])  # E1 again, today
    latest = await usage_report(ledger, rating, since=today.date(), until=today.date())
    assert [(x.tenant, x.price_book_version, x.charge_micros) for x in latest.lines] == [("acme", 2, 84)]


async def test_price_books_are_versions_never_edits(stores: tuple[SqlLedger, Rating]) -> None:
    _, rating = stores
    await rating.create_book(PriceBookSpec.model_validate(BOOK1))
    await rating.create_book(PriceBookSpec.model_validate({**BOOK1, "note": "same again"}))
    books = await rating.books()
    assert [(b.version, b.note) for b in books] == [(1, "launch prices"), (2, "same again")]
    assert books[0].prices == {"smollm2": ModelRate(100_000, 50_000, 200_000)}
    assert not any(hasattr(Rating, n) for n in ("update_book", "edit_book", "delete_book"))
    async with rating.engine.connect() as conn:
        stored = (await conn.execute(select(price_books.c.prices).where(price_books.c.version == 1))).scalar_one()
    assert stored == {"smollm2": {"input": 100_000, "cached_input": 50_000, "output": 200_000}}  # micros per 1M
    assert books[0].to_json()["prices"]["smollm2"] == {"input": "0.10", "cached_input": "0.05", "output": "0.20"}


def at(ts: float, e: UsageEvent, event_id: str) -> UsageEvent:
    return replace(e, event_id=event_id, started_at=ts, ended_at=ts + 1.0)


def test_amounts_are_exact_and_rounded_once() -> None:
    # 7 tokens at 0.10/1M is 0.7 micro-units: rounded per event, ten events would make 10 (1 each); the exact sum is 7.
    rate_ = ModelRate(100_000, 50_000, 200_000)
    one = PerToken().amounts(rate_, 7, 3, 0)
    assert one == (4 * 100_000, 3 * 50_000, 0)  # exact units: fresh 4, cached 3 (cached beyond prompt: ignored)
    assert NoCacheDiscount().amounts(rate_, 7, 3, 5) == (400_000, 300_000, 1_000_000)
    assert PerToken().amounts(rate_, 2, 9, -1) == (0, 100_000, 0)
    assert micros(sum(one) * 10) == 6 and sum(micros(sum(one)) for _ in range(10)) == 10


def test_book_in_force_is_chosen_by_instant() -> None:
    day = datetime(2026, 12, 7, tzinfo=UTC)
    b1 = book_from_spec(PriceBookSpec.model_validate(BOOK1), 1, day.replace(hour=9))
    b2 = book_from_spec(PriceBookSpec.model_validate(BOOK2), 2, day.replace(hour=14))
    b3 = book_from_spec(PriceBookSpec.model_validate(BOOK1), 3, day.replace(hour=12))  # stored later, earlier start
    books = [b1, b2, b3]
    ts = day.timestamp()
    assert book_at(books, ts) is b1  # before any book: the earliest
    assert book_at(books, ts + 9 * 3600) is b1 and book_at(books, ts + 13 * 3600) is b3
    assert book_at(books, ts + 14 * 3600 - 0.001) is b3 and book_at(books, ts + 14 * 3600) is b2
    assert book_at([], ts) is None
    pieces = book_changes(books, ts, ts + 86_400)
    assert [(p - ts, b.version if b else None) for p, b in pieces] == [(0, 1), (12 * 3600, 3), (14 * 3600, 2)]
    assert book_changes([b1], ts, ts + 86_400) == [(ts, b1)]  # the first book coming into force changes nothing


async def test_a_day_with_a_book_change_is_split_at_the_change(stores: tuple[SqlLedger, Rating]) -> None:
    ledger, rating = stores
    v1 = await rating.create_book(PriceBookSpec.model_validate(BOOK1), in_force_from=datetime(2026, 11, 1, tzinfo=UTC))
    change = datetime(2026, 11, 5, 12, tzinfo=UTC)
    v2 = await rating.create_book(PriceBookSpec.model_validate(BOOK2), in_force_from=change)
    t = change.timestamp()
    # Same usage before and after noon; bravo's adapter event only after; the day before has one event too.
    events = [at(t - 3600, E1, "a1"), at(t + 60, E1, "a2"), at(t + 120, E2, "b1"), at(t - 86_400, E1, "a0")]
    events.append(replace(at(t + 180, E1, "lost"), status="gateway_lost"))  # counted, never billed (as roll-ups)
    await ledger.insert(events)
    report = await usage_report(ledger, rating, since=date(2026, 11, 4), until=date(2026, 11, 5))
    got = [(x.day.day, x.tenant, x.model, x.price_book_version, x.requests, x.charge_micros) for x in report.lines]
    assert got == [
        (4, "acme", "smollm2", 1, 1, 180),
        (5, "acme", "smollm2", 1, 1, 180),  # before noon: v1
        (5, "acme", "smollm2", 2, 2, 84),  # after: acme's override in v2
        (5, "bravo", "smollm2:support-bot", 2, 1, 366_296),
    ]
    assert report.totals.charge_micros == 180 + 180 + 84 + 366_296 and (report.totals.ok, report.totals.lost) == (4, 1)
    assert (v1.version, v2.version) == (1, 2)
    only_acme = await usage_report(
        ledger, rating, since=date(2026, 11, 5), until=date(2026, 11, 5), tenant_id="tid-acme"
    )
    assert [(x.price_book_version, x.charge_micros) for x in only_acme.lines] == [(1, 180), (2, 84)]
    forced = await usage_report(ledger, rating, since=date(2026, 11, 5), until=date(2026, 11, 5), version=1)
    assert [x.price_book_version for x in forced.lines] == [1, 1]  # re-rated with one book: nothing to split


async def test_report_totals_are_the_exact_sum_rounded_once(stores: tuple[SqlLedger, Rating]) -> None:
    ledger, rating = stores
    await rating.create_book(PriceBookSpec.model_validate(BOOK1), in_force_from=datetime(2026, 11, 1, tzinfo=UTC))
    # 7 prompt (3 cached) and 3 output tokens: 0.4 + 0.15 + 0.6 = 1.15 micro-units each, on 25 days, one event a day.
    events = [
        at(T0 + d * 86_400, replace(E1, prompt_tokens=7, cached_tokens=3, completion_tokens=3), f"x{d}")
        for d in range(25)
    ]
    await ledger.insert(events)
    report = await usage_report(ledger, rating, since=date(2026, 11, 1), until=date(2026, 11, 30))
    assert len(report.lines) == 25 and all(x.charge_micros == 1 for x in report.lines)
    assert report.totals.charge_micros == 29  # 25 x 1.15 = 28.75, rounded once; lines each show 1
    assert (report.totals.fresh_input_micros, report.totals.cached_input_micros, report.totals.output_micros) == (
        10,
        4,
        15,
    )
