"""Keep serving (or refuse cleanly) when the shared limiter's store is unreachable.

fail_open decides in-process meanwhile, but not from nothing: each tenant starts from the month-to-date spend Redis
last reported to this gateway (every reserve and settle answers with it) and with the slots this gateway holds
there still counted, so a tenant over budget stays refused and a max-concurrency tenant gets no second slot. What
the outage left owed is paid when Redis answers again: settles that failed (each frees a slot; only the settle
that ends a lease counts, so a retry never counts twice), reservations whose answer was lost (cancelled), and the
spend the fallback charged. A tenant's own debt is paid before its next request is decided there, the rest in the
background; the backlog is bounded, and a lease runs out by itself if its settle is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

from redis.exceptions import RedisError

from fleetgate.domain.errors import ConfigError, Overloaded
from fleetgate.tenancy.limits.backlog import Backlog, PendingSettle
from fleetgate.tenancy.limits.base import Denial, Limiter, LimitSpec, Reservation, SpendSource, TenantCounters
from fleetgate.tenancy.limits.memory import MemoryLimiter, period_of

log = logging.getLogger(__name__)

Policy = Literal["fail_open", "fail_closed"]
POLICIES: tuple[Policy, ...] = ("fail_open", "fail_closed")
UNAVAILABLE_MESSAGE = "rate limits are unavailable (Redis unreachable); retry shortly"
# What counts as "the store is down" (as opposed to a bug, which must surface): redis-py errors, socket errors and
# the limiter's own deadline.
BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
DEFAULT_SETTLE_QUEUE = 10_000


class FailoverLimiter:
    """A primary limiter with an in-process fallback (fail_open) or a clean 503 (fail_closed) during outages.

    fail_open trades precision for availability: while Redis is down each gateway enforces the limits alone, so
    N gateways admit up to N x a tenant's rate limits; a budget is exceeded by at most what each gateway's
    fallback admits after the spend it last saw.
    """

    def __init__(
        self,
        primary: Limiter,
        fallback: MemoryLimiter,
        policy: str = "fail_open",
        *,
        probe_interval: float = 1.0,
        settle_queue: int = DEFAULT_SETTLE_QUEUE,
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
        self._spend_source = primary if isinstance(primary, SpendSource) else None
        # Only a primary whose settle counts once (it ends a lease, see limits/redis.py) can cancel a reservation
        # that may or may not have been taken.
        self._cancellable = bool(getattr(primary, "idempotent_settle", False))
        # Metrics: decisions the fallback made, and how many separate outages began.
        self.fallback_decisions = 0
        self.outages = 0
        self.settle_failures = 0
        self.backlog = Backlog(settle_queue)
        self._down = False
        self._next_probe = 0.0
        # Reservations the fallback took, so their settle goes back to it: keyed (tenant, request).
        self._by_fallback: set[tuple[str, str]] = set()
        self._on_primary: dict[str, set[str]] = {}  # tenant -> requests holding a primary slot, not yet settled
        self._seeded: set[str] = set()  # tenants the fallback was started for in this outage
        self._paying: asyncio.Task[None] | None = None

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
        self._seeded.clear()
        action = "deciding limits in-process" if self.policy == "fail_open" else "refusing requests (fail_closed)"
        log.warning("limiter %s unreachable (%s: %s); %s until it is back", self.name, type(exc).__name__, exc, action)

    def _mark_up(self) -> None:
        """End an outage; what it left owed is paid in the background."""
        if self._down:
            self._down = False
            log.warning("limiter %s reachable again; shared limits restored", self.name)
        if self.backlog and (self._paying is None or self._paying.done()):
            self._paying = asyncio.create_task(self._pay_all(), name="fleetgate-limits-backlog")

    def _unavailable(self) -> Overloaded:
        """The fail_closed answer."""
        return Overloaded(UNAVAILABLE_MESSAGE, retry_after=1)

    async def reserve(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        """Reserve on the primary, or per policy on the fallback / refuse while it is unreachable."""
        if not self._skip_primary() and await self._paid(tenant_id):
            try:
                result = await self.primary.reserve(tenant_id, request_id, spec, tokens, cost_micros)
            except BACKEND_ERRORS as exc:
                self._mark_down(exc)
                if self._cancellable:
                    # The script may have run before its answer was lost: cancel it once Redis answers (a no-op
                    # if it never ran), or its slot would stay taken until the lease ends.
                    cancel = Reservation(tenant_id, request_id, tokens, cost_micros, period_of(time.time())[0])
                    self.backlog.add_settle(PendingSettle(cancel, spec, 0, 0))
            else:
                self._mark_up()
                if isinstance(result, Reservation):
                    self._on_primary.setdefault(tenant_id, set()).add(request_id)
                return result
        if self.policy == "fail_closed":
            raise self._unavailable()
        return await self._reserve_in_process(tenant_id, request_id, spec, tokens, cost_micros)

    async def _paid(self, tenant_id: str) -> bool:
        """Pay what the tenant owes the primary before it decides for the tenant again (its slots, its spend);
        False when the primary failed meanwhile."""
        if not self.backlog.owes(tenant_id):
            return True
        try:
            await self._pay(tenant_id)
        except BACKEND_ERRORS as exc:
            self._mark_down(exc)
            return False
        return True

    async def _reserve_in_process(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        """The fallback's decision, for a tenant started from what Redis last said about it."""
        if tenant_id not in self._seeded:
            self._seeded.add(tenant_id)
            known = self._spend_source.known_spend(tenant_id) if self._spend_source is not None else None
            period, spend = known if known is not None else (period_of(time.time())[0], None)
            if spend is not None:
                spend += self.backlog.spend(tenant_id, period)
            self.fallback.seed(tenant_id, period, spend, self._on_primary.get(tenant_id, ()))
        self.fallback_decisions += 1
        result = await self.fallback.reserve(tenant_id, request_id, spec, tokens, cost_micros)
        if isinstance(result, Reservation):
            self._by_fallback.add((tenant_id, request_id))
            self.backlog.add_spend(tenant_id, result.period, cost_micros)
        return result

    async def settle(self, reservation: Reservation, spec: LimitSpec, tokens: int, cost_micros: int) -> None:
        """Settle on whichever back end took the reservation; a primary settle that fails is retried later."""
        tenant, request_id = reservation.tenant_id, reservation.request_id
        if (tenant, request_id) in self._by_fallback:
            self._by_fallback.discard((tenant, request_id))
            await self.fallback.settle(reservation, spec, tokens, cost_micros)
            self.backlog.add_spend(tenant, reservation.period, cost_micros - reservation.cost_micros)
            return
        held = self._on_primary.get(tenant)
        if held is not None:
            held.discard(request_id)
            if not held:
                del self._on_primary[tenant]
        self.fallback.release(tenant, request_id)  # a slot lent to the fallback at the outage's start
        pending = PendingSettle(reservation, spec, tokens, cost_micros)
        if self._skip_primary():
            self._settle_failed(pending)
            return
        try:
            await self.primary.settle(reservation, spec, tokens, cost_micros)
        except BACKEND_ERRORS as exc:
            # The request has been served: failing it now helps nobody. Retried once Redis answers.
            self._mark_down(exc)
            self._settle_failed(pending)
        else:
            self._mark_up()

    def _settle_failed(self, pending: PendingSettle) -> None:
        self.settle_failures += 1
        if not self.backlog.add_settle(pending):
            log.debug("limits backlog full: the lease of %s will run out instead", pending.reservation.request_id)

    async def _pay(self, tenant_id: str) -> None:
        """Pay one tenant's debt in order; raises the back end's error and keeps what was not paid."""
        debt = self.backlog.take(tenant_id)
        try:
            while debt.settles:
                p = debt.settles[0]
                await self.primary.settle(p.reservation, p.spec, p.tokens, p.cost_micros)
                debt.settles.pop(0)
            for period, micros in list(debt.spend.items()):
                if self._spend_source is not None:
                    await self._spend_source.add_spend(tenant_id, period, micros)
                del debt.spend[period]
        finally:
            self.backlog.give_back(tenant_id, debt)

    async def _pay_all(self) -> None:
        """Pay every tenant's debt, oldest first, until done or Redis fails again."""
        for tenant_id in self.backlog.tenants():
            if self._down:
                return
            try:
                await self._pay(tenant_id)
            except BACKEND_ERRORS as exc:
                self._mark_down(exc)
                return

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
        """Stop paying the backlog and close both back ends."""
        if self._paying is not None:
            self._paying.cancel()
            await asyncio.gather(self._paying, return_exceptions=True)
        try:
            await self.primary.close()
        finally:
            await self.fallback.close()
