"""Semantics every back end shares (run against MemoryLimiter and RedisLimiter)."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetgate.tenancy.limits.base import Denial, Limiter, LimitSpec, Reservation
from fleetgate.tenancy.limits.memory import period_of
from tests.waiting import wait_until

# Real time passes between calls (and Redis uses its own clock), so bucket values are compared loosely.
SLACK = 0.2


async def take(limiter: Limiter, spec: LimitSpec, request_id: str, tokens: int = 1, cost: int = 0) -> Reservation:
    """Reserve and insist on success."""
    result = await limiter.reserve("acme", request_id, spec, tokens, cost)
    assert isinstance(result, Reservation), result
    return result


async def _full(limiter: Limiter, spec: LimitSpec, capacity: int) -> bool:
    """The tenant's token bucket is at capacity."""
    return (await limiter.counters("acme", spec)).tokens_available == capacity


async def refuse(limiter: Limiter, spec: LimitSpec, request_id: str, tokens: int = 1, cost: int = 0) -> Denial:
    """Reserve and insist on a denial."""
    result = await limiter.reserve("acme", request_id, spec, tokens, cost)
    assert isinstance(result, Denial), result
    return result


async def test_rpm_denies_with_time_to_next_request(limiter: Limiter) -> None:
    spec = LimitSpec(rpm=3)
    for i in range(3):
        await take(limiter, spec, f"r{i}")
    denial = await refuse(limiter, spec, "r3")
    assert (denial.limit, denial.limit_value) == ("rpm", 3)
    assert denial.current == pytest.approx(0, abs=SLACK)
    assert denial.retry_after == pytest.approx(20.0, abs=SLACK * 20)  # one request refills in 60/3 s


async def test_tpm_denies_with_time_until_enough_tokens(limiter: Limiter) -> None:
    spec = LimitSpec(tpm=600)  # 10 tokens/s
    await take(limiter, spec, "a", tokens=500)
    denial = await refuse(limiter, spec, "b", tokens=200)
    assert (denial.limit, denial.limit_value) == ("tpm", 600)
    assert denial.current == pytest.approx(100, abs=SLACK * 10)
    assert denial.retry_after == pytest.approx(10.0, abs=SLACK)  # 100 missing tokens at 10/s


async def test_request_larger_than_tpm_capacity_is_never_admitted(limiter: Limiter) -> None:
    denial = await refuse(limiter, LimitSpec(tpm=100), "big", tokens=101)
    assert denial.limit == "tpm"
    assert denial.retry_after == 60.0
    assert denial.current == pytest.approx(100)


async def test_concurrency_denies_until_a_slot_is_settled(limiter: Limiter) -> None:
    spec = LimitSpec(max_concurrency=2)
    first = await take(limiter, spec, "a")
    await take(limiter, spec, "b")
    denial = await refuse(limiter, spec, "c")
    assert (denial.limit, denial.limit_value, denial.current, denial.retry_after) == ("concurrency", 2, 2, 1.0)
    await limiter.settle(first, spec, 1, 0)
    await take(limiter, spec, "c")


async def test_budget_denies_until_the_month_ends(limiter: Limiter) -> None:
    spec = LimitSpec(budget_micros=1000)
    await take(limiter, spec, "a", cost=600)
    denial = await refuse(limiter, spec, "b", cost=600)
    _, month_end = period_of(time.time())
    assert (denial.limit, denial.limit_value, denial.current) == ("budget", 1000, 600)
    assert denial.retry_after == pytest.approx(month_end - time.time(), abs=5)
    await take(limiter, spec, "c", cost=400)  # exactly up to the cap is allowed


@pytest.mark.parametrize(
    ("blocking", "spec", "tokens", "cost"),
    [
        ("tpm", LimitSpec(rpm=5, tpm=100, max_concurrency=5, budget_micros=1000), 500, 10),
        ("budget", LimitSpec(rpm=5, tpm=100, max_concurrency=5, budget_micros=1000), 10, 5000),
        ("concurrency", LimitSpec(rpm=5, tpm=100, max_concurrency=0, budget_micros=1000), 10, 10),
        ("rpm", LimitSpec(rpm=0, tpm=100, max_concurrency=5, budget_micros=1000), 10, 10),
    ],
)
async def test_a_denial_takes_nothing(limiter: Limiter, blocking: str, spec: LimitSpec, tokens: int, cost: int) -> None:
    denial = await refuse(limiter, spec, "x", tokens=tokens, cost=cost)
    assert denial.limit == blocking
    counters = await limiter.counters("acme", spec)
    assert counters.requests_available == pytest.approx(spec.rpm)
    assert counters.tokens_available == pytest.approx(spec.tpm)
    assert (counters.in_flight, counters.spend_micros) == (0, 0)


async def test_the_longest_wait_is_reported_when_several_limits_fail(limiter: Limiter) -> None:
    spec = LimitSpec(rpm=1, budget_micros=10)
    await take(limiter, spec, "a", cost=10)
    denial = await refuse(limiter, spec, "b", cost=1)
    assert denial.limit == "budget"  # waiting 60 s for the rpm bucket would not help


async def test_settle_refunds_unused_tokens_and_spend_and_frees_the_slot(limiter: Limiter) -> None:
    spec = LimitSpec(tpm=1000, max_concurrency=1, budget_micros=10_000)
    reservation = await take(limiter, spec, "a", tokens=800, cost=5000)
    await limiter.settle(reservation, spec, 100, 2000)
    counters = await limiter.counters("acme", spec)
    assert counters.tokens_available == pytest.approx(900, abs=SLACK * 17)
    assert (counters.in_flight, counters.spend_micros) == (0, 2000)
    assert counters.period == reservation.period == period_of(time.time())[0]


async def test_settle_charges_overruns_and_later_requests_wait(limiter: Limiter) -> None:
    spec = LimitSpec(tpm=600, budget_micros=10_000)
    reservation = await take(limiter, spec, "a", tokens=100, cost=1000)
    await limiter.settle(reservation, spec, 1100, 3000)  # 1000 tokens more than reserved: bucket at -500
    counters = await limiter.counters("acme", spec)
    assert counters.tokens_available == pytest.approx(-500, abs=SLACK * 10)
    assert counters.spend_micros == 3000
    denial = await refuse(limiter, spec, "b", tokens=0)
    assert denial.retry_after == pytest.approx(50.0, abs=SLACK)  # 500 tokens of debt at 10/s


async def test_buckets_refill_at_limit_per_minute(limiter: Limiter) -> None:
    spec = LimitSpec(tpm=600)  # 10 tokens/s
    before = time.monotonic()
    await take(limiter, spec, "a", tokens=600)
    emptied = time.monotonic()
    await asyncio.sleep(0.5)  # time passing is the subject here, not a wait for something to happen
    asked = time.monotonic()
    counters = await limiter.counters("acme", spec)
    answered = time.monotonic()
    # The bucket emptied within [before, emptied] and was read within [asked, answered]: bound the refill by those
    # moments instead of assuming how long each call took (a loaded machine stretches any of them).
    assert counters.tokens_available is not None
    assert 10 * (asked - emptied) - 1.0 <= counters.tokens_available <= 10 * (answered - before) + 1.0


async def test_refunds_never_lift_a_bucket_above_capacity(limiter: Limiter) -> None:
    spec = LimitSpec(tpm=60_000)  # 1000 tokens/s: the 100 reserved tokens are back within 0.1 s
    reservation = await take(limiter, spec, "a", tokens=100)
    await wait_until(lambda: _full(limiter, spec, 60_000), what="the bucket to refill")
    await limiter.settle(reservation, spec, 0, 0)  # the refund arrives at a bucket that is already full
    assert (await limiter.counters("acme", spec)).tokens_available == 60_000
    await take(limiter, spec, "b", tokens=60_000)  # a kept refund would leave 100 tokens here
    counters = await limiter.counters("acme", spec)
    assert counters.tokens_available is not None and counters.tokens_available < 50


async def test_unlimited_spec_admits_and_still_counts(limiter: Limiter) -> None:
    spec = LimitSpec()
    for i in range(50):
        await take(limiter, spec, f"r{i}", tokens=10**6, cost=7)
    counters = await limiter.counters("acme", spec)
    assert counters.requests_available is None and counters.tokens_available is None
    assert (counters.in_flight, counters.spend_micros) == (50, 350)


async def test_tenants_are_independent(limiter: Limiter) -> None:
    spec = LimitSpec(rpm=1)
    await take(limiter, spec, "a")
    assert isinstance(await limiter.reserve("other", "a", spec, 1, 0), Reservation)
    await refuse(limiter, spec, "b")
