"""fail_open outages: the fallback starts from what Redis last said, and what the outage left owed is paid after."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from fleetgate.tenancy.limits.base import Denial, LimitSpec, Reservation
from fleetgate.tenancy.limits.failover import FailoverLimiter
from fleetgate.tenancy.limits.memory import MemoryLimiter, period_of
from tests.tenancy.limits.conftest import FakeClock, RedisFactory
from tests.tenancy.limits.test_failover import FlakyPrimary

BUDGET = LimitSpec(budget_micros=1_000)
ONE_AT_A_TIME = LimitSpec(max_concurrency=1)


def _failover(primary: FlakyPrimary, clock: FakeClock, settle_queue: int = 100) -> FailoverLimiter:
    return FailoverLimiter(primary, MemoryLimiter(), "fail_open", clock=clock, settle_queue=settle_queue)


async def test_a_tenant_over_budget_stays_refused_while_redis_is_down() -> None:
    clock, primary = FakeClock(), FlakyPrimary()
    lim = _failover(primary, clock)
    held = await lim.reserve("acme", "r1", BUDGET, 10, 600)
    assert isinstance(held, Reservation)
    await lim.settle(held, BUDGET, 10, 900)  # spent 900 of 1000 this month, as the shared store knows
    primary.down = True
    refused = await lim.reserve("acme", "r2", BUDGET, 10, 200)
    assert isinstance(refused, Denial) and refused.limit == "budget" and refused.current == 900
    assert lim.degraded and lim.fallback_decisions == 1


async def test_spend_decided_in_process_is_added_to_the_shared_counter_when_it_is_back() -> None:
    clock, primary = FakeClock(), FlakyPrimary()
    lim = _failover(primary, clock)
    assert isinstance(await lim.reserve("acme", "seen", BUDGET, 1, 100), Reservation)  # Redis said: 100 spent
    primary.down = True
    during = await lim.reserve("acme", "r1", BUDGET, 10, 300)
    assert isinstance(during, Reservation)
    await lim.settle(during, BUDGET, 10, 250)  # the fallback charged 250 in all
    clock.advance(2.0)
    primary.down = False
    # The tenant's debt is paid before its next request is decided by the shared store: 100 + 250 + 700 > 1000.
    refused = await lim.reserve("acme", "r2", BUDGET, 10, 700)
    assert isinstance(refused, Denial) and refused.limit == "budget" and refused.current == 350
    assert (await primary.counters("acme", BUDGET)).spend_micros == 350
    assert not lim.backlog


async def test_a_slot_held_on_redis_counts_in_the_fallback() -> None:
    clock, primary = FakeClock(), FlakyPrimary()
    lim = _failover(primary, clock)
    running = await lim.reserve("acme", "long", ONE_AT_A_TIME, 1, 0)
    assert isinstance(running, Reservation)
    primary.down = True
    second = await lim.reserve("acme", "second", ONE_AT_A_TIME, 1, 0)
    assert isinstance(second, Denial) and second.limit == "concurrency"
    await lim.settle(running, ONE_AT_A_TIME, 1, 0)  # it ends during the outage: its slot frees here at once
    assert isinstance(await lim.reserve("acme", "third", ONE_AT_A_TIME, 1, 0), Reservation)


async def test_a_settle_lost_to_the_outage_frees_its_slot_as_soon_as_redis_answers() -> None:
    clock, primary = FakeClock(), FlakyPrimary()
    lim = _failover(primary, clock)
    held = await lim.reserve("acme", "r1", ONE_AT_A_TIME, 1, 0)
    assert isinstance(held, Reservation)
    primary.down = True
    await lim.settle(held, ONE_AT_A_TIME, 1, 0)
    assert (lim.settle_failures, len(lim.backlog)) == (1, 1)
    clock.advance(2.0)
    primary.down = False
    assert isinstance(await lim.reserve("acme", "r2", ONE_AT_A_TIME, 1, 0), Reservation)  # not "concurrency"
    assert (await primary.counters("acme", ONE_AT_A_TIME)).in_flight == 1  # r2 only
    assert len(lim.backlog) == 0


async def test_other_tenants_debts_are_paid_in_the_background() -> None:
    clock, primary = FakeClock(), FlakyPrimary()
    lim = _failover(primary, clock)
    held = await lim.reserve("quiet", "q1", ONE_AT_A_TIME, 1, 0)
    assert isinstance(held, Reservation)
    primary.down = True
    await lim.settle(held, ONE_AT_A_TIME, 1, 0)
    clock.advance(2.0)
    primary.down = False
    assert isinstance(await lim.reserve("busy", "b1", ONE_AT_A_TIME, 1, 0), Reservation)
    assert lim._paying is not None
    await lim._paying
    assert (await primary.counters("quiet", ONE_AT_A_TIME)).in_flight == 0
    assert not lim.backlog


async def test_the_backlog_is_bounded() -> None:
    clock, primary = FakeClock(), FlakyPrimary()
    lim = _failover(primary, clock, settle_queue=1)
    held = [await lim.reserve("acme", f"r{i}", LimitSpec(), 1, 0) for i in range(2)]
    primary.down = True
    for reservation in held:
        assert isinstance(reservation, Reservation)
        await lim.settle(reservation, LimitSpec(), 1, 0)
    assert (len(lim.backlog), lim.backlog.dropped, lim.settle_failures) == (1, 1, 2)


async def test_redis_settle_counts_once_and_reports_spend(redis_factory: RedisFactory) -> None:
    lim = redis_factory()
    held = await lim.reserve("acme", "r", BUDGET, 10, 300)
    assert isinstance(held, Reservation)
    assert lim.known_spend("acme") == (held.period, 300)
    await lim.settle(held, BUDGET, 10, 200)
    await lim.settle(held, BUDGET, 10, 200)  # retried after an outage although the first one ran: no change
    assert lim.known_spend("acme") == (held.period, 200)
    assert (await lim.counters("acme", BUDGET)).spend_micros == 200
    refused = await lim.reserve("acme", "r2", BUDGET, 10, 900)
    assert isinstance(refused, Denial) and lim.known_spend("acme") == (held.period, 200)
    await lim.add_spend("acme", held.period, 50)
    assert (await lim.counters("acme", BUDGET)).spend_micros == 250


async def test_a_reservation_whose_answer_was_lost_is_cancelled(redis_factory: RedisFactory) -> None:
    taken, never = redis_factory(), redis_factory()
    assert isinstance(
        await taken.reserve("acme", "lost", LimitSpec(max_concurrency=1, budget_micros=10**6), 5, 400), Reservation
    )
    # The failover wrapper cancels it once Redis answers: a settle of nothing, which counts only if the lease exists.
    period = period_of(time.time())[0]
    for rid in ("lost", "never-taken"):
        await never.settle(Reservation("acme", rid, 5, 400, period), LimitSpec(), 0, 0)
    counters = await never.counters("acme", LimitSpec())
    assert (counters.in_flight, counters.spend_micros) == (0, 0)


async def test_leases_are_renewed_while_their_requests_run(redis_factory: RedisFactory, redis_url: str) -> None:
    lim = redis_factory(lease_seconds=5)
    assert isinstance(await lim.reserve("acme", "long", ONE_AT_A_TIME, 1, 0), Reservation)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        key = f"{lim.prefix}{{acme}}:conc"
        first = await admin.zscore(key, "long")
        assert first is not None
        assert await lim.renew_leases() == 1
        renewed = await admin.zscore(key, "long")
        assert renewed is not None and renewed > first
        assert lim.held("acme") == {"long"}
        await lim.settle(Reservation("acme", "long", 1, 0, period_of(time.time())[0]), ONE_AT_A_TIME, 1, 0)
        assert lim.held("acme") == set() and await admin.zscore(key, "long") is None
        assert await lim.renew_leases() == 0
    finally:
        await admin.aclose()
