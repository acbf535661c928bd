"""The tenant plane on the request path: who is asking, may they, and is there room (reserve, then settle).

Budgets are charged at the price book in force when the request started, with the rating policy and the money
function rating uses (metering/price_books.py, metering/prices.py), so a tenant's month-to-date spend here is what
`fleetgate usage` rates the same requests at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from fleetgate.billing.price_books import PriceBooks
from fleetgate.billing.prices import MICROS_PER_UNIT, ModelRate, micros
from fleetgate.config import PricesConfig
from fleetgate.domain.errors import RateLimited
from fleetgate.domain.usage import Usage
from fleetgate.tenancy.auth import Principal, TenantAuthenticator
from fleetgate.tenancy.limits.base import Denial, Limiter, Reservation
from fleetgate.tenancy.policy import PolicyDecision, apply_policy, check_model

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Admission:
    """A request the tenant plane let through, with what it reserved."""

    principal: Principal
    decision: PolicyDecision
    reservation: Reservation
    rate: ModelRate | None  # None: nothing in the book in force prices it (charged 0, as rating does)
    settled: bool = False


class TenantGate:
    """Authentication, policy and fast limits, in that order."""

    def __init__(self, auth: TenantAuthenticator, limiter: Limiter, prices: PriceBooks | PricesConfig) -> None:
        self.auth = auth
        self.limiter = limiter
        self.prices = prices if isinstance(prices, PriceBooks) else PriceBooks.fixed(prices)
        self._settling: set[asyncio.Task[None]] = set()
        self._started = False
        # tenant id -> (budget period, exact month-to-date charge in this process): see _charge.
        self._spent: dict[str, tuple[str, int]] = {}

    async def start(self) -> None:
        """Load the price books and watch for new ones (admit does it on first use if the app did not)."""
        await self.prices.start()
        self._started = True

    async def stop(self) -> None:
        """Stop watching the price books."""
        await self.prices.stop()

    async def authenticate(self, authorization: bytes | None, *, client: str | None = None) -> Principal:
        """401 / 403 (429 when `client`, the peer address, failed too often), or the principal."""
        return await self.auth.authenticate(authorization, client=client)

    async def admit(
        self,
        principal: Principal,
        payload: dict[str, Any],
        request_id: str,
        *,
        model: str | None = None,
        adapter: str | None = None,
        started_at: float | None = None,
        context_window: int | None = None,
        max_choices: int = 16,
    ) -> Admission:
        """Apply the tenant's policy and reserve its limits; raise 403/400/429 with what to fix.

        `model` is the base model when the body names a LoRA `adapter` (already checked against the tenant); an
        adapter priced on its own (`base:adapter` in the price book) reserves budget at its own price. Prices are
        the book's in force at `started_at` (the usage event's start; default now), as rating will pick it."""
        if not self._started:
            await self.start()
        tenant = principal.tenant
        model = model or payload["model"]
        check_model(tenant, model)
        decision = apply_policy(tenant, payload, context_window, max_choices)
        out = decision.reserve_output_tokens  # the worst case: every completion to its limit
        rate = self.prices.rate(model, adapter, tenant.external_id, time.time() if started_at is None else started_at)
        tokens = decision.reserve_tokens
        cost = 0 if rate is None else micros(sum(self.prices.policy.amounts(rate, decision.est_input_tokens, 0, out)))
        result = await self.limiter.reserve(tenant.id, request_id, tenant.limits, tokens, cost)
        if isinstance(result, Denial):
            raise RateLimited(
                self._explain(result, principal, tokens),
                retry_after=max(result.retry_after, 0.001),
                reason=result.limit,
            )
        return Admission(principal, decision, result, rate)

    def _explain(self, denial: Denial, principal: Principal, tokens: int) -> str:
        who = f"tenant {principal.tenant.external_id!r}"
        if denial.limit == "rpm":
            return f"rate limit reached: {denial.limit_value} requests per minute for {who}; retry after the delay"
        if denial.limit == "tpm":
            if tokens > denial.limit_value:
                return (
                    f"this request needs about {tokens} tokens (prompt + max_tokens), more than {who}'s limit of"
                    f" {denial.limit_value} tokens per minute: lower max_tokens or shorten the prompt"
                )
            return f"token rate limit reached: {denial.limit_value} tokens per minute for {who}"
        if denial.limit == "concurrency":
            return f"too many concurrent requests: {who} may run {denial.limit_value} at once"
        currency = self.prices.currency
        return (
            f"monthly budget of {denial.limit_value / MICROS_PER_UNIT:.2f} {currency} for {who} is exhausted"
            f" (spent {denial.current / MICROS_PER_UNIT:.4f} {currency}); it renews at the start of next month"
        )

    async def settle(self, admission: Admission, usage: Usage | None, partial_completion: int) -> None:
        """Correct the reservation to what the engine really used and free the concurrency slot, exactly once.

        A limiter whose settle never suspends runs inline; any other runs in its own shielded task, so that a
        cancelled request (client gone, shutdown) still frees its slot.
        """
        if admission.settled:
            return
        admission.settled = True
        if usage is not None:
            prompt, cached, completion = usage
        else:
            prompt, cached, completion = admission.decision.est_input_tokens, 0, partial_completion
        rate = admission.rate
        cost = (
            0
            if rate is None
            else self._charge(admission, sum(self.prices.policy.amounts(rate, prompt, cached, completion)))
        )
        limits = admission.principal.tenant.limits
        settling = self.limiter.settle(admission.reservation, limits, prompt + completion, cost)
        try:
            if self.limiter.settles_inline:
                await settling  # never suspends, so a cancellation cannot land halfway through it
                return
            task = asyncio.create_task(settling)
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:  # the outermost boundary of settling: a failed settle must never fail the request
            log.exception("settling limits for request %s failed", admission.reservation.request_id)

    def _charge(self, admission: Admission, exact: int) -> int:
        """Micro-units to charge: how much the tenant's rounded month-to-date amount grows with this request.

        Rounding each request on its own would drift from the invoice, which rounds the exact sum once; charging
        the growth of the rounded sum keeps the counter equal to it (within 1 micro-unit per gateway process and
        restart, whose exact remainders are not shared)."""
        reservation = admission.reservation
        held = self._spent.get(reservation.tenant_id)
        if held is not None and held[0] > reservation.period:  # settled after its month ended: on its own
            return micros(exact)
        before = held[1] if held is not None and held[0] == reservation.period else 0
        after = before + exact
        self._spent[reservation.tenant_id] = (reservation.period, after)
        return micros(after) - micros(before)
