"""Build the configured limiter."""

from __future__ import annotations

from fleetgate.domain.errors import ConfigError
from fleetgate.tenancy.limits.base import Limiter
from fleetgate.tenancy.limits.failover import DEFAULT_SETTLE_QUEUE, POLICIES, FailoverLimiter
from fleetgate.tenancy.limits.memory import MemoryLimiter
from fleetgate.tenancy.limits.redis import DEFAULT_LEASE_SECONDS, RedisLimiter

BACKENDS = ("memory", "redis")


def make_limiter(
    backend: str,
    redis_url: str | None,
    on_redis_error: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    settle_queue: int = DEFAULT_SETTLE_QUEUE,
) -> Limiter:
    """A limiter for `limits.backend`; "redis" is wrapped so an outage follows `limits.on_redis_error`."""
    if backend == "memory":
        return MemoryLimiter()
    if backend == "redis":
        if not redis_url:
            raise ConfigError("limits.redis_url is required when limits.backend is 'redis'")
        if on_redis_error not in POLICIES:
            raise ConfigError(f"limits.on_redis_error must be one of {', '.join(POLICIES)}, not {on_redis_error!r}")
        primary = RedisLimiter(redis_url, lease_seconds=lease_seconds)
        return FailoverLimiter(primary, MemoryLimiter(), on_redis_error, settle_queue=settle_queue)
    raise ConfigError(f"limits.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
