"""RedisLimiter against a real Redis: shared enforcement across gateways, leases, key hygiene, server-side dates."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetgate.tenancy.limits.base import Denial, LimitSpec, Reservation
from fleetgate.tenancy.limits.memory import period_of
from fleetgate.tenancy.limits.redis import _LUA_CALENDAR, SPEND_TTL_SECONDS, RedisLimiter
from tests.tenancy.limits.conftest import RedisFactory
from tests.waiting import wait_until


async def test_two_gateways_enforce_one_rpm_together(redis_factory: RedisFactory) -> None:
    gateways = [redis_factory(), redis_factory()]
    spec = LimitSpec(rpm=20)
    started = time.monotonic()
    results = await asyncio.gather(*(gateways[i % 2].reserve("acme", f"r{i}", spec, 1, 0) for i in range(60)))
    elapsed = time.monotonic() - started
    admitted = sum(isinstance(r, Reservation) for r in results)
    assert 20 <= admitted <= 20 + int(20 / 60 * elapsed)
    assert {r.limit for r in results if isinstance(r, Denial)} == {"rpm"}


async def test_two_gateways_share_tokens_and_budget(redis_factory: RedisFactory) -> None:
    a, b = redis_factory(), redis_factory()
    spec = LimitSpec(tpm=1000, budget_micros=1000)
    results = await asyncio.gather(*((a, b)[i % 2].reserve("acme", f"r{i}", spec, 100, 100) for i in range(30)))
    assert sum(isinstance(r, Reservation) for r in results) == 10
    counters = await a.counters("acme", spec)
    assert counters.spend_micros == 1000
    assert counters.tokens_available == pytest.approx(0, abs=5)


async def test_concurrency_slots_are_shared_and_freed_by_either_gateway(redis_factory: RedisFactory) -> None:
    a, b = redis_factory(), redis_factory()
    spec = LimitSpec(max_concurrency=3)
    results = await asyncio.gather(*((a, b)[i % 2].reserve("acme", f"r{i}", spec, 1, 0) for i in range(12)))
    held = [r for r in results if isinstance(r, Reservation)]
    assert len(held) == 3
    assert (await b.counters("acme", spec)).in_flight == 3
    await b.settle(held[0], spec, 1, 0)  # settled by the other process: the slot lives in Redis, not in a gateway
    assert isinstance(await a.reserve("acme", "next", spec, 1, 0), Reservation)
    assert isinstance(await b.reserve("acme", "over", spec, 1, 0), Denial)


async def _idle(limiter: RedisLimiter, spec: LimitSpec) -> bool:
    """No request of the tenant holds a concurrency slot."""
    return (await limiter.counters("acme", spec)).in_flight == 0


async def test_a_crashed_gateways_slots_free_themselves_when_the_lease_ends(redis_factory: RedisFactory) -> None:
    crashed, alive = redis_factory(lease_seconds=0.3), redis_factory()
    spec = LimitSpec(max_concurrency=2)
    for i in range(2):
        assert isinstance(await crashed.reserve("acme", f"c{i}", spec, 1, 0), Reservation)
    assert isinstance(await alive.reserve("acme", "a0", spec, 1, 0), Denial)
    # The crashed gateway never settles, nor renews its leases any more: they (0.3 s) run out on their own.
    await crashed.close()
    await wait_until(lambda: _idle(alive, spec), what="the crashed gateway's leases to run out")
    assert isinstance(await alive.reserve("acme", "a1", spec, 1, 0), Reservation)


async def test_every_key_expires(redis_factory: RedisFactory, redis_url: str) -> None:
    lim = redis_factory(lease_seconds=120)
    spec = LimitSpec(rpm=60, tpm=600, max_concurrency=5, budget_micros=10**6)
    assert isinstance(await lim.reserve("acme", "r", spec, 300, 10), Reservation)
    client = redis.Redis.from_url(redis_url)
    try:
        ttls = {k.decode().removeprefix(lim.prefix): client.ttl(k) for k in client.scan_iter(match=f"{lim.prefix}*")}
    finally:
        client.close()
    period = period_of(time.time())[0]
    assert set(ttls) == {"{acme}:rpm", "{acme}:tpm", "{acme}:conc", f"{{acme}}:spend:{period}"}
    assert 1 <= ttls["{acme}:rpm"] <= 3  # one request refills in 1 s: the key goes once the bucket is full
    assert 30 <= ttls["{acme}:tpm"] <= 32  # 300 tokens at 10/s
    assert 119 <= ttls["{acme}:conc"] <= 121
    assert SPEND_TTL_SECONDS - 5 <= ttls[f"{{acme}}:spend:{period}"] <= SPEND_TTL_SECONDS


async def test_a_denial_writes_no_keys(redis_factory: RedisFactory, redis_url: str) -> None:
    lim = redis_factory()
    spec = LimitSpec(rpm=5, tpm=10, max_concurrency=5, budget_micros=100)
    assert isinstance(await lim.reserve("acme", "r", spec, 50, 10), Denial)
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{lim.prefix}*")) == []
    finally:
        client.close()


def _calendar(client: redis.Redis, moments: list[float]) -> list[tuple[str, float]]:
    """Run the reserve script's calendar code on `moments`."""
    script = (
        _LUA_CALENDAR
        + """
local out = {}
for i, s in ipairs(ARGV) do
  local p, e = period_of(tonumber(s))
  out[#out + 1] = p
  out[#out + 1] = e
end
return out
"""
    )
    flat = client.eval(script, 0, *(repr(m) for m in moments))
    return [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def test_lua_calendar_agrees_at_every_month_boundary(redis_url: str) -> None:
    starts = [datetime(y, m, 1, tzinfo=UTC).timestamp() for y in range(1970, 2200) for m in range(1, 13)]
    moments = [t + d for t in starts for d in (-0.5, 0.0, 0.5)]
    moments = [m for m in moments if m >= 0]
    client = redis.Redis.from_url(redis_url)
    try:
        got = _calendar(client, moments)
    finally:
        client.close()
    assert got == [period_of(m) for m in moments]


@settings(max_examples=30, deadline=None)
@given(moments=st.lists(st.floats(0, 7_000_000_000), min_size=1, max_size=50))
def test_lua_calendar_agrees_anywhere(redis_url: str, moments: list[float]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert _calendar(client, moments) == [period_of(m) for m in moments]
    finally:
        client.close()


async def test_period_comes_from_the_server_clock(redis_factory: RedisFactory, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        seconds, _ = client.time()
    finally:
        client.close()
    counters = await redis_factory().counters("acme", LimitSpec())
    assert counters.period == period_of(seconds)[0]
