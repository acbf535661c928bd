"""Redis limiter: one Lua script checks and takes every limit atomically, shared by all gateway processes.

Every time-dependent decision uses the Redis server's clock (`TIME`), so gateways whose clocks disagree still
agree on bucket levels, lease expiry and the budget month. Keys of one tenant share a `{tenant}` hash tag, so a
Redis Cluster keeps them in one slot and the scripts stay atomic there too.

A concurrency slot is a lease: it ends `lease_seconds` after it was taken unless the gateway holding it renews it
(every third of the lease while the request runs), so a crashed gateway or a settle lost to an outage frees the
slot within one lease, while a long stream keeps its own. Only the settle that removes the lease corrects tokens
and spend, so a settle retried after an outage (it may have run before the connection broke) counts once, and a
reservation whose answer was lost can be cancelled safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from fleetgate.tenancy.limits.base import Denial, LimitName, LimitSpec, Reservation, TenantCounters
from fleetgate.tenancy.limits.memory import CONCURRENCY_RETRY_AFTER, NEVER_FITS_RETRY_AFTER

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "fleetgate:lim:"
DEFAULT_LEASE_SECONDS = 60.0
SPEND_TTL_SECONDS = 40 * 86400  # outlives the month it counts, then disappears on its own
_LIMIT_NAMES: dict[str, LimitName] = {"rpm": "rpm", "tpm": "tpm", "concurrency": "concurrency", "budget": "budget"}

# UTC calendar arithmetic (H. Hinnant's civil-from-days), because the script takes the month from server time.
_LUA_CALENDAR = """
local floor = math.floor
local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end
local function period_of(now)
  local z = floor(now / 86400) + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  local y = yoe + era * 400 + ((m <= 2) and 1 or 0)
  local ny, nm = y, m + 1
  if m == 12 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m), days_from_civil(ny, nm) * 86400
end
"""

# Every script's clock and number format: the server's TIME, and floats that survive the trip as text.
_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- A concurrency zset lives as long as its longest lease (scores are lease ends).
local function expire_with_leases(key, now)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] ~= nil then redis.call('EXPIRE', key, math.ceil(tonumber(last[2]) - now) + 1) end
end
local function add_spend(key, delta, ttl)
  local spend = redis.call('INCRBY', key, delta)
  redis.call('EXPIRE', key, ttl)
  return spend
end
"""

# Buckets are hashes {level, ts}; a missing key is a full bucket, so each expires once it would be full again.
_LUA_BUCKETS = """
local function bucket_level(key, cap, now)
  local v = redis.call('HMGET', key, 'level', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil or ts == nil then return cap end
  return math.min(cap, level + math.max(0, now - ts) * cap / 60)
end
local function bucket_store(key, cap, level, now)
  redis.call('HSET', key, 'level', fmt(level), 'ts', fmt(now))
  local ttl = 1
  if cap > 0 then ttl = math.ceil((cap - level) * 60 / cap) + 1 end
  redis.call('EXPIRE', key, math.max(1, ttl))
end
"""

# KEYS: rpm, tpm, concurrency zset. ARGV: rpm, tpm, max_conc, budget (-1 = off), tokens, cost, request_id,
# lease seconds, spend key prefix (same hash tag), spend ttl, never-fits retry, concurrency retry.
_RESERVE = (
    _LUA_COMMON
    + _LUA_CALENDAR
    + _LUA_BUCKETS
    + """
local now = server_now()
local rpm, tpm, conc, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, cost, lease = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local never, conc_retry = tonumber(ARGV[11]), tonumber(ARGV[12])
local period, period_end = period_of(now)
local spend_key = ARGV[9] .. period
local best = nil
local function deny(limit, retry, value, current)
  if best == nil or retry > best[2] then best = {limit, retry, value, current} end
end
local function check_bucket(limit, cap, level, need)
  if level >= need then return end
  if need > cap or cap <= 0 then deny(limit, never, cap, level)
  else deny(limit, (need - level) * 60 / cap, cap, level) end
end
local rpm_level, tpm_level = 0, 0
if rpm >= 0 then rpm_level = bucket_level(KEYS[1], rpm, now); check_bucket('rpm', rpm, rpm_level, 1) end
if tpm >= 0 then tpm_level = bucket_level(KEYS[2], tpm, now); check_bucket('tpm', tpm, tpm_level, tokens) end
-- Leases of crashed gateways end here, so their slots come back without anyone settling them.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now))
local in_flight = redis.call('ZCARD', KEYS[3])
if conc >= 0 and in_flight >= conc then deny('concurrency', conc_retry, conc, in_flight) end
local spend = tonumber(redis.call('GET', spend_key) or '0')
if budget >= 0 and spend + cost > budget then deny('budget', math.max(0, period_end - now), budget, spend) end
if best ~= nil then
  return {0, best[1], fmt(best[2]), best[3], fmt(best[4]), period, spend}
end
if rpm >= 0 then bucket_store(KEYS[1], rpm, rpm_level - 1, now) end
if tpm >= 0 then bucket_store(KEYS[2], tpm, tpm_level - tokens, now) end
redis.call('ZADD', KEYS[3], fmt(now + lease), ARGV[7])
expire_with_leases(KEYS[3], now)
if cost ~= 0 then spend = redis.call('INCRBY', spend_key, ARGV[6]) end
redis.call('EXPIRE', spend_key, tonumber(ARGV[10]))
return {1, period, spend}
"""
)

# KEYS: tpm, concurrency zset, spend key of the reservation's period. ARGV: tpm (-1 = off), token delta,
# cost delta, request_id, spend ttl. Corrects only when it ends the lease (see the module docstring); returns the
# period's spend.
_SETTLE = (
    _LUA_COMMON
    + _LUA_BUCKETS
    + """
local now = server_now()
local tpm, dtok, dcost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('ZREM', KEYS[2], ARGV[4]) == 0 then
  return tonumber(redis.call('GET', KEYS[3]) or '0')
end
if tpm >= 0 and dtok ~= 0 then
  bucket_store(KEYS[1], tpm, math.min(tpm, bucket_level(KEYS[1], tpm, now) - dtok), now)
end
if dcost ~= 0 then return add_spend(KEYS[3], ARGV[3], tonumber(ARGV[5])) end
return tonumber(redis.call('GET', KEYS[3]) or '0')
"""
)

# KEYS: concurrency zset. ARGV: lease seconds, request ids. Renews the leases still held (XX: an expired one is
# not brought back); the key lives as long as its longest lease.
_RENEW = (
    _LUA_COMMON
    + """
local now = server_now()
local score = fmt(now + tonumber(ARGV[1]))
local renewed = 0
for i = 2, #ARGV do renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', score, ARGV[i]) end
expire_with_leases(KEYS[1], now)
return renewed
"""
)

# KEYS: spend key. ARGV: delta, ttl. Spend a fallback decided while Redis was unreachable; returns the new total.
_ADD_SPEND = _LUA_COMMON + "return add_spend(KEYS[1], ARGV[1], tonumber(ARGV[2]))"

# KEYS: rpm, tpm, concurrency zset. ARGV: rpm, tpm (-1 = off), spend key prefix.
_COUNTERS = (
    _LUA_COMMON
    + _LUA_CALENDAR
    + _LUA_BUCKETS
    + """
local now = server_now()
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local period = period_of(now)
local r, k = '', ''
if rpm >= 0 then r = fmt(bucket_level(KEYS[1], rpm, now)) end
if tpm >= 0 then k = fmt(bucket_level(KEYS[2], tpm, now)) end
local in_flight = redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf')
return {r, k, in_flight, redis.call('GET', ARGV[3] .. period) or '0', period}
"""
)


@dataclass(frozen=True, slots=True)
class _Scripts:
    """The limiter's scripts, registered on its client (sent once, then run by their SHA)."""

    reserve: AsyncScript
    settle: AsyncScript
    counters: AsyncScript
    renew: AsyncScript
    add_spend: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> _Scripts:
        """Register every script on `client`."""
        scripts = (_RESERVE, _SETTLE, _COUNTERS, _RENEW, _ADD_SPEND)
        return cls(*(client.register_script(script) for script in scripts))


def _off(value: int | None) -> int:
    """Scripts take -1 for an unlimited limit."""
    return -1 if value is None else value


class RedisLimiter:
    """Limits shared by every gateway process that points at the same Redis."""

    name = "redis"
    settles_inline = False
    idempotent_settle = True  # only the settle that ends a lease corrects anything

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        connect_timeout: float = 0.25,
        op_timeout: float = 0.25,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        client: aioredis.Redis | None = None,
    ) -> None:
        """Connect lazily to `url` (or own `client`); timeouts are short so a sick Redis cannot stall requests."""
        # No client-side retries: one timeout is enough to decide, and the failover wrapper handles the outage.
        self._redis = client or aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=op_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.prefix = prefix
        self._lease = lease_seconds
        # A hard ceiling on top of the socket timeouts, which do not cover every await inside redis-py.
        self._deadline = connect_timeout + op_timeout
        self._scripts = _Scripts.register(self._redis)
        self._spend: dict[str, tuple[str, int]] = {}  # tenant -> (period, spend) from Redis's last answer
        self._held: dict[str, set[str]] = {}  # tenant -> request ids whose leases this process renews
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, tenant_id: str, suffix: str) -> str:
        """A tenant key; the braces are a Redis Cluster hash tag keeping one tenant's keys in one slot."""
        return f"{self.prefix}{{{tenant_id}}}:{suffix}"

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int | float]) -> Any:
        """Run a registered script within the deadline."""
        async with asyncio.timeout(self._deadline):
            return await script(keys=keys, args=args)

    def known_spend(self, tenant_id: str) -> tuple[str, int] | None:
        """(period, spend) from Redis's last answer about the tenant (reserve, settle, counters)."""
        return self._spend.get(tenant_id)

    def held(self, tenant_id: str) -> set[str]:
        """Requests of the tenant that hold a lease taken by this process and not yet settled."""
        return set(self._held.get(tenant_id, ()))

    async def reserve(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        """Check every limit and take the reservation in one script, or take nothing and name the refusing limit."""
        keys = [self._key(tenant_id, "rpm"), self._key(tenant_id, "tpm"), self._key(tenant_id, "conc")]
        args: list[str | int | float] = [
            _off(spec.rpm),
            _off(spec.tpm),
            _off(spec.max_concurrency),
            _off(spec.budget_micros),
            tokens,
            cost_micros,
            request_id,
            repr(self._lease),
            self._key(tenant_id, "spend:"),
            SPEND_TTL_SECONDS,
            repr(NEVER_FITS_RETRY_AFTER),
            repr(CONCURRENCY_RETRY_AFTER),
        ]
        out = await self._run(self._scripts.reserve, keys, args)
        if int(out[0]) == 1:
            period = _text(out[1])
            self._spend[tenant_id] = (period, int(out[2]))
            self._held.setdefault(tenant_id, set()).add(request_id)
            self._start_renewing()
            return Reservation(tenant_id, request_id, tokens, cost_micros, period)
        self._spend[tenant_id] = (_text(out[5]), int(out[6]))
        return Denial(_LIMIT_NAMES[_text(out[1])], float(out[2]), int(out[3]), float(out[4]))

    async def settle(self, reservation: Reservation, spec: LimitSpec, tokens: int, cost_micros: int) -> None:
        """Correct tokens and spend by (actual - reserved) and free the concurrency slot, if the lease is still
        held (a settle that already ran, or a lease that ran out, changes nothing)."""
        tenant = reservation.tenant_id
        held = self._held.get(tenant)
        if held is not None:
            # Whatever happens to this call, this process stops renewing the lease: at worst it ends on its own.
            held.discard(reservation.request_id)
            if not held:
                del self._held[tenant]
        keys = [self._key(tenant, "tpm"), self._key(tenant, "conc"), self._key(tenant, f"spend:{reservation.period}")]
        args: list[str | int | float] = [
            _off(spec.tpm),
            tokens - reservation.tokens,
            cost_micros - reservation.cost_micros,
            reservation.request_id,
            SPEND_TTL_SECONDS,
        ]
        spend = await self._run(self._scripts.settle, keys, args)
        self._note_spend(tenant, reservation.period, int(spend))

    async def add_spend(self, tenant_id: str, period: str, delta_micros: int) -> None:
        """Add spend decided elsewhere (the in-process fallback during an outage) to the tenant's month."""
        if delta_micros == 0:
            return
        key = self._key(tenant_id, f"spend:{period}")
        spend = await self._run(self._scripts.add_spend, [key], [delta_micros, SPEND_TTL_SECONDS])
        self._note_spend(tenant_id, period, int(spend))

    def _note_spend(self, tenant_id: str, period: str, spend: int) -> None:
        known = self._spend.get(tenant_id)
        if known is None or known[0] <= period:  # a late settle of last month does not hide this month's spend
            self._spend[tenant_id] = (period, spend)

    async def counters(self, tenant_id: str, spec: LimitSpec) -> TenantCounters:
        """Current counters of one tenant, read in one script at server time."""
        keys = [self._key(tenant_id, "rpm"), self._key(tenant_id, "tpm"), self._key(tenant_id, "conc")]
        out = await self._run(
            self._scripts.counters, keys, [_off(spec.rpm), _off(spec.tpm), self._key(tenant_id, "spend:")]
        )
        requests, tokens = _text(out[0]), _text(out[1])
        self._note_spend(tenant_id, _text(out[4]), int(out[3]))
        return TenantCounters(
            requests_available=float(requests) if requests else None,
            tokens_available=float(tokens) if tokens else None,
            in_flight=int(out[2]),
            spend_micros=int(out[3]),
            period=_text(out[4]),
        )

    async def ping(self) -> None:
        """Raise unless Redis answers within the limiter's deadline (for /readyz)."""
        async with asyncio.timeout(self._deadline):
            await self._redis.ping()

    async def renew_leases(self) -> int:
        """Push back the expiry of every lease this process holds; how many were renewed."""
        renewed = 0
        for tenant, ids in list(self._held.items()):
            if ids:
                renewed += int(
                    await self._run(self._scripts.renew, [self._key(tenant, "conc")], [repr(self._lease), *ids])
                )
        return renewed

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name="fleetgate-lease-renewer")

    async def _renew_loop(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease / 3)
            try:
                await self.renew_leases()
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                # Redis is down: the failover wrapper is already deciding; leases lapse on their own if it stays down.
                log.debug("lease renewal failed: %s", type(exc).__name__)

    async def close(self) -> None:
        """Stop renewing leases and close the connection pool."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    """Script replies arrive as bytes unless the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value
