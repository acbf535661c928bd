"""Fixtures for the limiter tests: a fake clock, and RedisLimiters on the session's own Redis (`redis_url`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from fleetgate.tenancy.limits.base import Limiter
from fleetgate.tenancy.limits.memory import MemoryLimiter
from fleetgate.tenancy.limits.redis import RedisLimiter

T = TypeVar("T")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


def resolve(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must finish without suspending (MemoryLimiter never awaits: that is its atomicity)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the coroutine suspended; MemoryLimiter must not await inside reserve/settle")


RedisFactory = Callable[..., RedisLimiter]


@pytest.fixture
async def redis_factory(redis_url: str) -> AsyncIterator[RedisFactory]:
    """Make RedisLimiters (each with its own pool, like separate gateways) under a prefix unique to this test."""
    prefix = f"fgtest:{uuid.uuid4().hex}:"
    made: list[RedisLimiter] = []

    def make(**kwargs: Any) -> RedisLimiter:
        # Semantics tests, not timeout tests: the production 0.25 s can expire on a loaded CI box when a burst
        # opens dozens of connections at once (test_failover covers the short timeouts).
        kwargs.setdefault("connect_timeout", 3.0)
        kwargs.setdefault("op_timeout", 3.0)
        limiter = RedisLimiter(redis_url, prefix=prefix, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()
    admin = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*")]
        if keys:
            await admin.delete(*keys)
    finally:
        await admin.aclose()


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Limiter:
    """Each back end in turn, for behaviour both must share."""
    if request.param == "memory":
        return MemoryLimiter()
    factory: RedisFactory = request.getfixturevalue("redis_factory")
    return factory()
