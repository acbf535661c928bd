"""What a gateway still owes the shared limiter after an outage: settles that failed, and spend decided in-process."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetgate.tenancy.limits.base import LimitSpec, Reservation


@dataclass(frozen=True, slots=True)
class PendingSettle:
    """A settle the shared store did not take (it was unreachable): retried when it answers again."""

    reservation: Reservation
    spec: LimitSpec
    tokens: int
    cost_micros: int


@dataclass(slots=True)
class TenantDebt:
    """One tenant's part of the backlog."""

    settles: list[PendingSettle] = field(default_factory=list)
    spend: dict[str, int] = field(default_factory=dict)  # period -> micros the fallback charged, not yet in Redis

    def __bool__(self) -> bool:
        return bool(self.settles) or any(self.spend.values())


class Backlog:
    """Per tenant, in arrival order; at most `max_settles` settles are kept (a dropped one's lease runs out)."""

    def __init__(self, max_settles: int) -> None:
        self.max_settles = max_settles
        self._tenants: dict[str, TenantDebt] = {}
        self._settles = 0
        self.dropped = 0  # settles that did not fit

    def __len__(self) -> int:
        """Pending settles."""
        return self._settles

    def __bool__(self) -> bool:
        return bool(self._tenants)

    def owes(self, tenant_id: str) -> bool:
        """True when something of this tenant waits for the shared store."""
        return tenant_id in self._tenants

    def tenants(self) -> list[str]:
        """Tenants with something pending, oldest first."""
        return list(self._tenants)

    def add_settle(self, pending: PendingSettle) -> bool:
        """Queue a settle; False (and counted) when the backlog is full."""
        if self._settles >= self.max_settles:
            self.dropped += 1
            return False
        self._tenants.setdefault(pending.reservation.tenant_id, TenantDebt()).settles.append(pending)
        self._settles += 1
        return True

    def add_spend(self, tenant_id: str, period: str, delta_micros: int) -> None:
        """Remember spend the fallback charged (or refunded), to be added to the shared counter."""
        if delta_micros == 0:
            return
        debt = self._tenants.setdefault(tenant_id, TenantDebt())
        debt.spend[period] = debt.spend.get(period, 0) + delta_micros
        if not debt:
            del self._tenants[tenant_id]

    def spend(self, tenant_id: str, period: str) -> int:
        """Spend of the tenant in `period` not yet added to the shared counter."""
        debt = self._tenants.get(tenant_id)
        return 0 if debt is None else debt.spend.get(period, 0)

    def take(self, tenant_id: str) -> TenantDebt:
        """Remove and return the tenant's debt (give back what could not be paid with `give_back`)."""
        debt = self._tenants.pop(tenant_id, None) or TenantDebt()
        self._settles -= len(debt.settles)
        return debt

    def give_back(self, tenant_id: str, debt: TenantDebt) -> None:
        """Put unpaid debt back in front of anything queued for the tenant meanwhile."""
        if not debt:
            return
        newer = self._tenants.pop(tenant_id, None)
        if newer is not None:
            debt.settles.extend(newer.settles)
            self._settles -= len(newer.settles)
            for period, micros in newer.spend.items():
                debt.spend[period] = debt.spend.get(period, 0) + micros
        self._tenants[tenant_id] = debt
        self._settles += len(debt.settles)
