"""Keep serving (or refuse cleanly) when the shared limiter's store is unreachable."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

from redis.exceptions import RedisError

from fleetgate.errors import ConfigError, Overloaded
from fleetgate.tenancy.limits.base import Denial, Limiter, LimitSpec, Reservation, TenantCounters

log = logging.getLogger(__name__)

Policy = Literal["fail_open", "fail_closed"]
POLICIES: tuple[Policy, ...] = ("fail_open", "fail_closed")
UNAVAILABLE_MESSAGE = "rate limits are unavailable (Redis unreachable); retry shortly"
# What counts as "the store is down" (as opposed to a bug, which must surface): redis-py errors, socket errors and
# the limiter's own deadline.
BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)


class FailoverLimiter:
    """A primary limiter with an in-process fallback (fail_open) or a clean 503 (fail_closed) during outages.

    fail_open trades precision for availability: while Redis is down each gateway enforces the limits alone, so
    N gateways admit up to N x a tenant's limits.
    """

    def __init__(
        self,
        primary: Limiter,
        fallback: Limiter,
        policy: str = "fail_open",
        *,
        probe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wrap `primary`; during an outage try it again only every `probe_interval` seconds."""
        if policy not in POLICIES:
            raise ConfigError(f"limits.on_redis_error must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.name = primary.name
        self.settles_inline = False  # its primary is a network service
        self.primary = primary
        self.fallback = fallback
        self.policy = policy
        self.probe_interval = probe_interval
        self._clock = clock
        # Metrics: decisions the fallback made, and how many separate outages began.
        self.fallback_decisions = 0
        self.outages = 0
        self.settle_failures = 0
        self._down = False
        self._next_probe = 0.0
        # Reservations the fallback took, so their settle goes back to it: keyed (tenant, request).
        self._by_fallback: set[tuple[str, str]] = set()

    @property
    def degraded(self) -> bool:
        """True while the primary is considered unreachable."""
        return self._down

    def _skip_primary(self) -> bool:
        """During an outage, skip the primary until the next probe is due; let exactly one caller probe."""
        if not self._down:
            return False
        now = self._clock()
        if now < self._next_probe:
            return True
        # Push the next probe out before probing, so concurrent requests don't all wait on a dead socket.
        self._next_probe = now + self.probe_interval
        return False

    def _mark_down(self, exc: BaseException) -> None:
        """Start (or extend) an outage; warn once per outage, not per request."""
        self._next_probe = self._clock() + self.probe_interval
        if self._down:
            return
        self._down = True
        self.outages += 1
        action = "deciding limits in-process" if self.policy == "fail_open" else "refusing requests (fail_closed)"
        log.warning("limiter %s unreachable (%s: %s); %s until it is back", self.name, type(exc).__name__, exc, action)

    def _mark_up(self) -> None:
        """End an outage."""
        if self._down:
            self._down = False
            log.warning("limiter %s reachable again; shared limits restored", self.name)

    def _unavailable(self) -> Overloaded:
        """The fail_closed answer."""
        return Overloaded(UNAVAILABLE_MESSAGE, retry_after=1)

    async def reserve(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        """Reserve on the primary, or per policy on the fallback / refuse while it is unreachable."""
        if not self._skip_primary():
            try:
                result = await self.primary.reserve(tenant_id, request_id, spec, tokens, cost_micros)
            except BACKEND_ERRORS as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return result
        if self.policy == "fail_closed":
            raise self._unavailable()
        self.fallback_decisions += 1
        result = await self.fallback.reserve(tenant_id, request_id, spec, tokens, cost_micros)
        if isinstance(result, Reservation):
            self._by_fallback.add((tenant_id, request_id))
        return result

    async def settle(self, reservation: Reservation, spec: LimitSpec, tokens: int, cost_micros: int) -> None:
        """Settle on whichever back end took the reservation; a lost primary settle is left to its lease."""
        key = (reservation.tenant_id, reservation.request_id)
        if key in self._by_fallback:
            self._by_fallback.discard(key)
            await self.fallback.settle(reservation, spec, tokens, cost_micros)
            return
        if self._skip_primary():
            self.settle_failures += 1
            return
        try:
            await self.primary.settle(reservation, spec, tokens, cost_micros)
        except BACKEND_ERRORS as exc:
            # The request has been served: failing it now helps nobody. The slot frees itself when its lease ends.
            self.settle_failures += 1
            self._mark_down(exc)
        else:
            self._mark_up()

    async def counters(self, tenant_id: str, spec: LimitSpec) -> TenantCounters:
        """The primary's counters, or per policy the fallback's while it is unreachable."""
        if not self._skip_primary():
            try:
                result = await self.primary.counters(tenant_id, spec)
            except BACKEND_ERRORS as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return result
        if self.policy == "fail_closed":
            raise self._unavailable()
        return await self.fallback.counters(tenant_id, spec)

    async def close(self) -> None:
        """Close both back ends."""
        try:
            await self.primary.close()
        finally:
            await self.fallback.close()
