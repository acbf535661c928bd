"""MemoryLimiter with a hand-driven clock: exact retry hints, refill and the budget month."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from fleetgate.tenancy.limits.base import Denial, LimitSpec, Reservation
from fleetgate.tenancy.limits.memory import MemoryLimiter, period_of
from tests.tenancy.limits.conftest import FakeClock, resolve


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of a UTC date-time."""
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def assert_denial(result: object, limit: str, retry_after: float, limit_value: int, current: float) -> None:
    """`result` is a Denial with these values (floats compared approximately)."""
    assert isinstance(result, Denial), result
    assert (result.limit, result.limit_value) == (limit, limit_value)
    assert result.retry_after == pytest.approx(retry_after)
    assert result.current == pytest.approx(current)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(at(2026, 11, 15))


@pytest.fixture
def lim(clock: FakeClock, wall: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock=clock, wall=wall)


def reserve(lim: MemoryLimiter, spec: LimitSpec, request_id: str, tokens: int = 1, cost: int = 0) -> object:
    return resolve(lim.reserve("acme", request_id, spec, tokens, cost))


def test_rpm_retry_after_is_exact_and_the_request_passes_then(lim: MemoryLimiter, clock: FakeClock) -> None:
    spec = LimitSpec(rpm=6)  # one request per 10 s
    for i in range(6):
        assert isinstance(reserve(lim, spec, f"r{i}"), Reservation)
    clock.advance(4)
    assert_denial(reserve(lim, spec, "late"), "rpm", 6.0, 6, 0.4)
    clock.advance(5.99)
    assert isinstance(reserve(lim, spec, "still-early"), Denial)
    clock.advance(0.02)
    assert isinstance(reserve(lim, spec, "on-time"), Reservation)


def test_tpm_retry_after_is_exact(lim: MemoryLimiter, clock: FakeClock) -> None:
    spec = LimitSpec(tpm=120)  # 2 tokens/s
    assert isinstance(reserve(lim, spec, "a", tokens=100), Reservation)
    assert_denial(reserve(lim, spec, "b", tokens=50), "tpm", 15.0, 120, 20.0)
    clock.advance(15)
    assert isinstance(reserve(lim, spec, "b", tokens=50), Reservation)


def test_a_bucket_refills_to_capacity_and_no_further(lim: MemoryLimiter, clock: FakeClock) -> None:
    spec = LimitSpec(rpm=10, tpm=1000)
    assert isinstance(reserve(lim, spec, "a", tokens=1000), Reservation)
    clock.advance(3600)
    counters = resolve(lim.counters("acme", spec))
    assert (counters.requests_available, counters.tokens_available) == (10, 1000)


def test_a_clock_stepping_back_removes_nothing(lim: MemoryLimiter, clock: FakeClock) -> None:
    spec = LimitSpec(tpm=600)
    assert isinstance(reserve(lim, spec, "a", tokens=300), Reservation)
    clock.advance(-100)
    assert resolve(lim.counters("acme", spec)).tokens_available == 300


def test_lowering_a_limit_clamps_the_bucket(lim: MemoryLimiter) -> None:
    assert isinstance(reserve(lim, LimitSpec(rpm=100), "a"), Reservation)
    assert resolve(lim.counters("acme", LimitSpec(rpm=5))).requests_available == 5


def test_budget_resets_at_the_month_boundary(lim: MemoryLimiter, wall: FakeClock) -> None:
    spec = LimitSpec(budget_micros=1000)
    wall.now = at(2026, 12, 31, 23, 59, 50)
    held = reserve(lim, spec, "a", cost=1000)
    assert isinstance(held, Reservation) and held.period == "2026-12"
    assert_denial(reserve(lim, spec, "b", cost=1), "budget", 10.0, 1000, 1000)
    wall.now = at(2027, 1, 1)
    fresh = reserve(lim, spec, "b", cost=1000)
    assert isinstance(fresh, Reservation) and fresh.period == "2027-01"
    # Settling December's request must not touch January's spend.
    resolve(lim.settle(held, spec, 1, 5000))
    counters = resolve(lim.counters("acme", spec))
    assert (counters.period, counters.spend_micros, counters.in_flight) == ("2027-01", 1000, 1)


@pytest.mark.parametrize(
    ("moment", "period", "end"),
    [
        (at(2026, 1, 1), "2026-01", at(2026, 2, 1)),
        (at(2028, 2, 29, 12), "2028-02", at(2028, 3, 1)),
        (at(2026, 12, 31, 23, 59, 59), "2026-12", at(2027, 1, 1)),
    ],
)
def test_period_of(moment: float, period: str, end: float) -> None:
    assert period_of(moment) == (period, end)


def test_settle_of_an_unknown_tenant_is_harmless(lim: MemoryLimiter) -> None:
    resolve(lim.settle(Reservation("ghost", "r", 1, 1, "2026-11"), LimitSpec(tpm=10), 5, 5))
    assert resolve(lim.counters("ghost", LimitSpec(tpm=10))).tokens_available == 10


async def test_concurrent_tasks_cannot_overshoot() -> None:
    lim = MemoryLimiter()
    spec = LimitSpec(rpm=10, max_concurrency=7)
    results = await asyncio.gather(*(lim.reserve("acme", f"r{i}", spec, 1, 0) for i in range(100)))
    assert sum(isinstance(r, Reservation) for r in results) == 7
    assert {r.limit for r in results if isinstance(r, Denial)} == {"concurrency"}
