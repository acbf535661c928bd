"""FailoverLimiter: fail_open onto the in-process fallback, fail_closed with a 503, probing with back-off."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from fleetgate.domain.errors import ConfigError, Overloaded
from fleetgate.tenancy.limits.base import Denial, LimitSpec, Reservation, TenantCounters
from fleetgate.tenancy.limits.failover import UNAVAILABLE_MESSAGE, FailoverLimiter
from fleetgate.tenancy.limits.memory import MemoryLimiter
from fleetgate.tenancy.limits.redis import RedisLimiter
from tests.fakes import free_port
from tests.tenancy.limits.conftest import FakeClock, RedisFactory

SPEC = LimitSpec(rpm=100, max_concurrency=10)
# A RedisLimiter gives up within its own deadline (0.25 s connect + 0.25 s per operation); past HANG it hangs.
# The gap is slack for a loaded 2-core machine: what these tests catch is a wait of Redis's own timeouts or more.
HANG = 5.0


class FlakyPrimary(MemoryLimiter):
    """A primary whose store can be switched off; counts the calls that reached it."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def _touch(self) -> None:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("connection refused")

    async def reserve(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        self._touch()
        return await super().reserve(tenant_id, request_id, spec, tokens, cost_micros)

    async def settle(self, reservation: Reservation, spec: LimitSpec, tokens: int, cost_micros: int) -> None:
        self._touch()
        await super().settle(reservation, spec, tokens, cost_micros)

    async def counters(self, tenant_id: str, spec: LimitSpec) -> TenantCounters:
        self._touch()
        return await super().counters(tenant_id, spec)


@pytest.fixture
async def dead_redis() -> AsyncIterator[RedisLimiter]:
    """A RedisLimiter pointed at a 127.0.0.1 port nobody listens on."""
    lim = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0")
    yield lim
    await lim.close()


async def test_fail_open_admits_via_the_fallback_without_hanging(
    dead_redis: RedisLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    fallback = MemoryLimiter()
    lim = FailoverLimiter(dead_redis, fallback, "fail_open")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fleetgate.tenancy.limits.failover"):
        results = [await lim.reserve("acme", f"r{i}", SPEC, 1, 0) for i in range(5)]
    assert time.monotonic() - started < HANG
    assert all(isinstance(r, Reservation) for r in results)
    assert (lim.outages, lim.fallback_decisions, lim.degraded) == (1, 5, True)
    # Only this module's records: another test's garbage-collected client may log through asyncio meanwhile.
    ours = [r for r in caplog.records if r.name == "fleetgate.tenancy.limits.failover"]
    assert len(ours) == 1 and "unreachable" in ours[0].getMessage()
    assert (await fallback.counters("acme", SPEC)).in_flight == 5


async def test_fail_open_still_limits_in_process(dead_redis: RedisLimiter) -> None:
    lim = FailoverLimiter(dead_redis, MemoryLimiter(), "fail_open")
    results = [await lim.reserve("acme", f"r{i}", LimitSpec(rpm=3), 1, 0) for i in range(5)]
    assert [isinstance(r, Reservation) for r in results] == [True] * 3 + [False] * 2


async def test_fail_closed_raises_overloaded(dead_redis: RedisLimiter) -> None:
    lim = FailoverLimiter(dead_redis, MemoryLimiter(), "fail_closed")
    started = time.monotonic()
    with pytest.raises(Overloaded) as caught:
        await lim.reserve("acme", "r", SPEC, 1, 0)
    assert time.monotonic() - started < HANG
    assert caught.value.message == UNAVAILABLE_MESSAGE
    assert (caught.value.retry_after, caught.value.status) == (1, 503)
    with pytest.raises(Overloaded):
        await lim.counters("acme", SPEC)
    assert (lim.outages, lim.fallback_decisions) == (1, 0)


async def test_a_redis_that_accepts_but_never_answers_times_out() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # read forever, answer nothing
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    primary = RedisLimiter(f"redis://127.0.0.1:{port}/0")
    lim = FailoverLimiter(primary, MemoryLimiter(), "fail_open")
    try:
        started = time.monotonic()
        assert isinstance(await lim.reserve("acme", "r", SPEC, 1, 0), Reservation)
        assert time.monotonic() - started < HANG
        assert lim.outages == 1
    finally:
        await lim.close()
        server.close()


async def test_back_off_probe_recovery_and_settle_routing() -> None:
    clock = FakeClock()
    primary, fallback = FlakyPrimary(), MemoryLimiter()
    lim = FailoverLimiter(primary, fallback, "fail_open", probe_interval=1.0, clock=clock)
    on_primary = await lim.reserve("acme", "p", SPEC, 1, 0)
    primary.down = True
    on_fallback = await lim.reserve("acme", "f", SPEC, 1, 0)
    for i in range(10):  # inside the back-off nobody waits on the dead primary
        await lim.reserve("acme", f"x{i}", SPEC, 1, 0)
    assert primary.calls == 2
    clock.advance(1.0)
    primary.down = False
    assert isinstance(await lim.reserve("acme", "back", SPEC, 1, 0), Reservation)
    assert (primary.calls, lim.degraded, lim.fallback_decisions) == (3, False, 11)
    assert isinstance(on_primary, Reservation) and isinstance(on_fallback, Reservation)

    assert (await fallback.counters("acme", SPEC)).in_flight == 10  # "f" and 9 of the 10 "x" (max_concurrency)
    await lim.settle(on_fallback, SPEC, 1, 0)  # taken by the fallback: settled there, though the primary is back
    assert primary.calls == 3
    assert (await fallback.counters("acme", SPEC)).in_flight == 9
    await lim.settle(on_primary, SPEC, 1, 0)
    assert (await primary.counters("acme", SPEC)).in_flight == 1  # only "back" remains on the primary


async def test_each_outage_is_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    primary = FlakyPrimary()
    lim = FailoverLimiter(primary, MemoryLimiter(), "fail_open", clock=clock)
    with caplog.at_level(logging.WARNING, logger="fleetgate.tenancy.limits.failover"):
        for down in (True, False, True, True, False):
            primary.down = down
            clock.advance(2.0)
            await lim.reserve("acme", str(clock.now), SPEC, 1, 0)
    assert lim.outages == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "fleetgate.tenancy.limits.failover"]
    assert sum("unreachable" in m for m in messages) == 2
    assert sum("reachable again" in m for m in messages) == 2


async def test_a_failed_primary_settle_is_swallowed_and_counted() -> None:
    primary = FlakyPrimary()
    lim = FailoverLimiter(primary, MemoryLimiter(), "fail_closed", clock=FakeClock())
    held = await lim.reserve("acme", "r", SPEC, 1, 0)
    assert isinstance(held, Reservation)
    primary.down = True
    await lim.settle(held, SPEC, 1, 0)  # the response is already out; this must not raise
    assert (lim.settle_failures, lim.outages) == (1, 1)


async def test_a_healthy_redis_decides_everything(redis_factory: RedisFactory) -> None:
    fallback = MemoryLimiter()
    lim = FailoverLimiter(redis_factory(), fallback, "fail_open")
    held = await lim.reserve("acme", "r", SPEC, 1, 0)
    assert isinstance(held, Reservation)
    assert (await lim.counters("acme", SPEC)).in_flight == 1
    await lim.settle(held, SPEC, 1, 0)
    assert (lim.fallback_decisions, lim.outages) == (0, 0)
    assert (await lim.counters("acme", SPEC)).in_flight == 0
    assert (await fallback.counters("acme", SPEC)).in_flight == 0


def test_an_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"limits\.on_redis_error.*fail_open, fail_closed"):
        FailoverLimiter(MemoryLimiter(), MemoryLimiter(), "fail_sideways")
