"""make_limiter: the configured back end, or a ConfigError that names the field."""

from __future__ import annotations

import pytest

from fleetgate.domain.errors import ConfigError
from fleetgate.tenancy.limits.factory import make_limiter
from fleetgate.tenancy.limits.failover import FailoverLimiter
from fleetgate.tenancy.limits.memory import MemoryLimiter
from fleetgate.tenancy.limits.redis import RedisLimiter

NEVER_DIALLED = "redis://127.0.0.1:9/0"  # RedisLimiter connects lazily and these tests make no call


def test_memory() -> None:
    assert isinstance(make_limiter("memory", None, "fail_open"), MemoryLimiter)


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_redis_is_wrapped_in_failover(policy: str) -> None:
    lim = make_limiter("redis", NEVER_DIALLED, policy)
    assert isinstance(lim, FailoverLimiter)
    assert isinstance(lim.primary, RedisLimiter) and isinstance(lim.fallback, MemoryLimiter)
    assert (lim.policy, lim.name) == (policy, "redis")
    await lim.close()


def test_unknown_backend_names_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"limits\.backend must be one of memory, redis, not 'memcached'"):
        make_limiter("memcached", None, "fail_open")


def test_redis_needs_a_url() -> None:
    with pytest.raises(ConfigError, match=r"limits\.redis_url"):
        make_limiter("redis", None, "fail_open")


def test_unknown_policy() -> None:
    with pytest.raises(ConfigError, match=r"limits\.on_redis_error"):
        make_limiter("redis", NEVER_DIALLED, "maybe")
