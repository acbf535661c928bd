"""The Redis a limiter uses: is it there, its pid and version (for the report), a run's keys (to check and drop).

Short timeouts, and never on a measured path: these run before and after the load.
"""

from __future__ import annotations

from typing import Any

import redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# fleetgate.tenancy.limits.redis.DEFAULT_PREFIX, written out: the gateway measured may be another checkout.
KEY_PREFIX = "fleetgate:lim:"


def client(url: str) -> redis.Redis:
    """A short-timeout client for checks and clean-up (the gateway has its own)."""
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)


def problem(url: str) -> str | None:
    """Why Redis at `url` cannot be used, or None."""
    try:
        with client(url) as c:
            c.ping()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {url} unreachable ({type(exc).__name__})"
    return None


def server_info(url: str) -> dict[str, Any] | None:
    """`redis_version` and `redis_pid` of the server (its CPU is reported apart), or None if unreachable."""
    try:
        with client(url) as c:
            info = c.info("server")
            return {"redis_version": info.get("redis_version"), "redis_pid": int(info["process_id"])}
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def spend(url: str, tenant_id: str, prefix: str = KEY_PREFIX) -> int:
    """Budget spend (micros) a tenant has in Redis, summed over its month keys."""
    total = 0
    with client(url) as c:
        for key in c.scan_iter(match=f"{prefix}{{{tenant_id}}}:spend:*", count=1000):
            total += int(c.get(key) or 0)
    return total


def drop_keys(url: str, tenant_id: str, prefix: str = KEY_PREFIX) -> int:
    """Delete a run's limiter keys (its tenant id is fresh, so nothing else matches); return how many."""
    with client(url) as c:
        keys = list(c.scan_iter(match=f"{prefix}{{{tenant_id}}}:*", count=1000))
        if keys:
            c.delete(*keys)
    return len(keys)
