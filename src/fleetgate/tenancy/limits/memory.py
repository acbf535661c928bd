"""In-process limiter: exact within one gateway process, the fallback when Redis is unreachable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fleetgate.tenancy.limits.base import Denial, LimitName, LimitSpec, Reservation, TenantCounters

# Retry hints for limits that do not refill on a schedule.
CONCURRENCY_RETRY_AFTER = 1.0
NEVER_FITS_RETRY_AFTER = 60.0  # the request is larger than the bucket: a full minute, though it can never pass


def month_of(wall_seconds: float) -> tuple[str, float, float]:
    """The UTC calendar month containing `wall_seconds`: "YYYY-MM" and the epoch seconds at which it starts and ends."""
    now = datetime.fromtimestamp(wall_seconds, UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    start = datetime(now.year, now.month, 1, tzinfo=UTC).timestamp()
    return f"{now.year:04d}-{now.month:02d}", start, datetime(year, month, 1, tzinfo=UTC).timestamp()


def period_of(wall_seconds: float) -> tuple[str, float]:
    """The UTC calendar month containing `wall_seconds` as "YYYY-MM" and the epoch second at which it ends."""
    period, _, end = month_of(wall_seconds)
    return period, end


def pick_denial(denials: list[Denial]) -> Denial | None:
    """The denial with the longest wait: a retry can only succeed once every failing limit has recovered."""
    return max(denials, key=lambda d: d.retry_after, default=None)


def bucket_denial(limit: LimitName, capacity: int, level: float, need: float) -> Denial | None:
    """Deny if a bucket of `capacity` (refilling capacity/60 per second) holding `level` cannot give `need`."""
    if level >= need:
        return None
    if need > capacity or capacity <= 0:
        return Denial(limit, NEVER_FITS_RETRY_AFTER, capacity, level)
    return Denial(limit, (need - level) * 60.0 / capacity, capacity, level)


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float

    def refill(self, capacity: int, now: float) -> float:
        """Bring the level up to `now`; a clock that steps back adds nothing rather than removing tokens."""
        elapsed = max(0.0, now - self.stamp)
        self.level = min(float(capacity), self.level + elapsed * capacity / 60.0)
        self.stamp = now
        return self.level


@dataclass(slots=True)
class _Tenant:
    rpm: _Bucket | None = None
    tpm: _Bucket | None = None
    in_flight: set[str] = field(default_factory=set)
    period: str = ""
    spend_micros: int = 0


class MemoryLimiter:
    """Token buckets, a concurrency counter and a monthly budget per tenant, held in this process."""

    name = "memory"
    settles_inline = True  # settle() touches only this process's dicts and never awaits

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        """`clock` drives the buckets (monotonic), `wall` the budget's calendar month."""
        self._clock = clock
        self._wall = wall
        self._tenants: dict[str, _Tenant] = {}
        self._month: tuple[str, float, float] = ("", 0.0, 0.0)  # month_of() of the last month seen

    def _period(self, wall: float) -> tuple[str, float]:
        """period_of(wall), computed once a month instead of twice per request (datetimes, ~3 us)."""
        period, start, end = self._month
        if not start <= wall < end:
            self._month = period, start, end = month_of(wall)
        return period, end

    def _bucket(self, tenant: _Tenant, which: LimitName, capacity: int | None, now: float) -> _Bucket | None:
        """The refilled bucket, created full on first use; None when the limit is off."""
        if capacity is None:
            return None
        bucket: _Bucket | None = getattr(tenant, which)
        if bucket is None:
            bucket = _Bucket(float(capacity), now)
            setattr(tenant, which, bucket)
        bucket.refill(capacity, now)
        return bucket

    def _tenant(self, tenant_id: str, period: str) -> _Tenant:
        """The tenant's state with spend rolled over to `period`."""
        tenant = self._tenants.setdefault(tenant_id, _Tenant())
        if tenant.period != period:
            tenant.period, tenant.spend_micros = period, 0
        return tenant

    async def reserve(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        """Check every limit and take the reservation, or take nothing and name the limit that refused."""
        # No await from here to the end: on one event loop the check and the take cannot interleave.
        now, wall = self._clock(), self._wall()
        period, period_end = self._period(wall)
        tenant = self._tenant(tenant_id, period)
        rpm = self._bucket(tenant, "rpm", spec.rpm, now)
        tpm = self._bucket(tenant, "tpm", spec.tpm, now)

        denials: list[Denial] = []
        if rpm is not None and spec.rpm is not None and (d := bucket_denial("rpm", spec.rpm, rpm.level, 1)):
            denials.append(d)
        if tpm is not None and spec.tpm is not None and (d := bucket_denial("tpm", spec.tpm, tpm.level, tokens)):
            denials.append(d)
        if spec.max_concurrency is not None and len(tenant.in_flight) >= spec.max_concurrency:
            denials.append(
                Denial("concurrency", CONCURRENCY_RETRY_AFTER, spec.max_concurrency, float(len(tenant.in_flight)))
            )
        if spec.budget_micros is not None and tenant.spend_micros + cost_micros > spec.budget_micros:
            denials.append(
                Denial("budget", max(0.0, period_end - wall), spec.budget_micros, float(tenant.spend_micros))
            )
        if (denial := pick_denial(denials)) is not None:
            return denial

        if rpm is not None:
            rpm.level -= 1
        if tpm is not None:
            tpm.level -= tokens
        tenant.in_flight.add(request_id)
        tenant.spend_micros += cost_micros
        return Reservation(tenant_id, request_id, tokens, cost_micros, period)

    async def settle(self, reservation: Reservation, spec: LimitSpec, tokens: int, cost_micros: int) -> None:
        """Correct tokens and spend by (actual - reserved) and free the concurrency slot."""
        tenant = self._tenants.get(reservation.tenant_id)
        if tenant is None:
            return
        tenant.in_flight.discard(reservation.request_id)
        tpm = self._bucket(tenant, "tpm", spec.tpm, self._clock())
        if tpm is not None and spec.tpm is not None:
            # Refunds cannot lift the bucket above capacity; overruns may push it below zero.
            tpm.level = min(float(spec.tpm), tpm.level - (tokens - reservation.tokens))
        # A request that straddled the month boundary corrects a month that no longer limits anyone.
        if tenant.period == reservation.period:
            tenant.spend_micros += cost_micros - reservation.cost_micros

    async def counters(self, tenant_id: str, spec: LimitSpec) -> TenantCounters:
        """Current counters of one tenant (refilled to now)."""
        period, _ = self._period(self._wall())
        tenant = self._tenant(tenant_id, period)
        now = self._clock()
        rpm = self._bucket(tenant, "rpm", spec.rpm, now)
        tpm = self._bucket(tenant, "tpm", spec.tpm, now)
        return TenantCounters(
            requests_available=None if rpm is None else rpm.level,
            tokens_available=None if tpm is None else tpm.level,
            in_flight=len(tenant.in_flight),
            spend_micros=tenant.spend_micros,
            period=period,
        )

    def seed(self, tenant_id: str, period: str, spend_micros: int | None, holding: Iterable[str] = ()) -> None:
        """Start a tenant from what the shared store last said: its spend in `period` (ignored once that month is
        over) and the requests it already holds slots for there (they count against max_concurrency here too)."""
        current, _ = self._period(self._wall())
        tenant = self._tenant(tenant_id, current)
        if spend_micros is not None and period == current:
            tenant.spend_micros = max(tenant.spend_micros, spend_micros)
        tenant.in_flight.update(holding)

    def release(self, tenant_id: str, request_id: str) -> None:
        """Free a slot `seed` lent, without correcting tokens or spend (that request was settled elsewhere)."""
        tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            tenant.in_flight.discard(request_id)

    def known_spend(self, tenant_id: str) -> tuple[str, int] | None:
        """(period, spend) of a tenant this process has seen."""
        tenant = self._tenants.get(tenant_id)
        return None if tenant is None or not tenant.period else (tenant.period, tenant.spend_micros)

    async def add_spend(self, tenant_id: str, period: str, delta_micros: int) -> None:
        """Add spend counted elsewhere (a past month's is dropped: it limits nobody any more)."""
        tenant = self._tenant(tenant_id, self._period(self._wall())[0])
        if tenant.period == period:
            tenant.spend_micros += delta_micros

    async def close(self) -> None:
        """Nothing to release."""
