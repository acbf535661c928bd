"""The limiter interface: reserve an estimate atomically before serving, settle with real usage after.

The check and the increment are one atomic operation on one store (LiteLLM's per-process-check/Redis-increment
split made the real limit `limit x replicas`). Every back end implements exactly these semantics:

- requests/min and tokens/min are token buckets whose capacity is the per-minute limit and whose refill rate is
  limit/60 per second; over any window of T seconds a bucket admits at most `capacity + rate * T`.
- a reservation takes 1 request, `tokens` tokens, one concurrency slot and `cost_micros` of budget, all or none.
- `settle` corrects tokens and spend by (actual - reserved) (a bucket may go below zero: later requests wait) and
  frees the concurrency slot. It is called exactly once per successful reservation, on every path.
- budget spend is counted per calendar month (UTC); the ledger stays the billing truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

LimitName = Literal["rpm", "tpm", "concurrency", "budget"]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A tenant's limits; None means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_micros: int | None = None  # spend cap per month, in millionths of the currency unit


@dataclass(frozen=True, slots=True)
class Reservation:
    """What was taken for one request, to be settled when it ends."""

    tenant_id: str
    request_id: str
    tokens: int
    cost_micros: int
    period: str  # the budget period the spend was counted in, e.g. "2026-11"


@dataclass(frozen=True, slots=True)
class Denial:
    """Which limit refused the request and when a retry can succeed."""

    limit: LimitName
    retry_after: float  # seconds; for the budget, seconds until the period ends
    limit_value: int
    current: float  # tokens left / requests left / slots in use / spend so far (micros)


@dataclass(frozen=True, slots=True)
class TenantCounters:
    """A snapshot for display (`fleetgate top`, admin API)."""

    requests_available: float | None
    tokens_available: float | None
    in_flight: int
    spend_micros: int
    period: str


class Limiter(Protocol):
    """A back end for the fast limits."""

    name: str
    # True when settle() never suspends (in-process counters): the gate then awaits it directly, which no
    # cancellation can interrupt, instead of running it in a shielded task of its own (~8 us per request).
    settles_inline: bool

    async def reserve(
        self, tenant_id: str, request_id: str, spec: LimitSpec, tokens: int, cost_micros: int
    ) -> Reservation | Denial:
        """Atomically check every limit and take the reservation, or take nothing and say which limit refused."""
        ...

    async def settle(self, reservation: Reservation, spec: LimitSpec, tokens: int, cost_micros: int) -> None:
        """Correct tokens and spend to the real usage and free the concurrency slot."""
        ...

    async def counters(self, tenant_id: str, spec: LimitSpec) -> TenantCounters:
        """Current counters of one tenant."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class SpendSource(Protocol):
    """A back end that tells what it last knew of a tenant's month-to-date spend, and takes spend decided elsewhere.

    The fail_open fallback starts from what the shared store last said (so a tenant over budget stays refused
    during an outage) and hands what it charged back once the store returns.
    """

    def known_spend(self, tenant_id: str) -> tuple[str, int] | None:
        """(period, spend in micros) from this back end's last answer about the tenant, without asking it again."""
        ...

    async def add_spend(self, tenant_id: str, period: str, delta_micros: int) -> None:
        """Add spend decided elsewhere to the tenant's counter of `period`."""
        ...
