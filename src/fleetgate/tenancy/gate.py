"""The tenant plane on the request path: who is asking, may they, and is there room (reserve, then settle)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fleetgate.config import ModelPrice, PricesConfig
from fleetgate.errors import RateLimited
from fleetgate.metering.prices import MICROS_PER_UNIT, cost_micros
from fleetgate.tenancy.auth import Principal, TenantAuthenticator
from fleetgate.tenancy.limits.base import Denial, Limiter, Reservation
from fleetgate.tenancy.policy import DEFAULT_OUTPUT_RESERVATION, PolicyDecision, apply_policy, check_model

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Admission:
    """A request the tenant plane let through, with what it reserved."""

    principal: Principal
    decision: PolicyDecision
    reservation: Reservation
    price: ModelPrice
    settled: bool = False


class TenantGate:
    """Authentication, policy and fast limits, in that order."""

    def __init__(self, auth: TenantAuthenticator, limiter: Limiter, prices: PricesConfig) -> None:
        self.auth = auth
        self.limiter = limiter
        self.prices = prices
        self._settling: set[asyncio.Task[None]] = set()

    async def authenticate(self, authorization: bytes | None) -> Principal:
        """401 / 403, or the principal."""
        return await self.auth.authenticate(authorization)

    async def admit(
        self,
        principal: Principal,
        payload: dict[str, Any],
        request_id: str,
        *,
        model: str | None = None,
        adapter: str | None = None,
    ) -> Admission:
        """Apply the tenant's policy and reserve its limits; raise 403/400/429 with what to fix.

        `model` is the base model when the body names a LoRA `adapter` (already checked against the tenant); an
        adapter priced on its own (`base:adapter` in the price book) reserves budget at its own price."""
        tenant = principal.tenant
        model = model or payload["model"]
        check_model(tenant, model)
        decision = apply_policy(tenant, payload)
        out = decision.max_output_tokens or DEFAULT_OUTPUT_RESERVATION
        price = self.prices.for_model(model, adapter)
        tokens = decision.est_input_tokens + out
        cost = cost_micros(price, decision.est_input_tokens, 0, out)
        result = await self.limiter.reserve(tenant.id, request_id, tenant.limits, tokens, cost)
        if isinstance(result, Denial):
            raise RateLimited(
                self._explain(result, principal, tokens),
                retry_after=max(result.retry_after, 0.001),
                reason=result.limit,
            )
        return Admission(principal, decision, result, price)

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

    async def settle(self, admission: Admission, usage: dict[str, Any] | None, partial_completion: int) -> None:
        """Correct the reservation to what the engine really used and free the concurrency slot, exactly once.

        A limiter whose settle never suspends runs inline; any other runs in its own shielded task, so that a
        cancelled request (client gone, shutdown) still frees its slot.
        """
        if admission.settled:
            return
        admission.settled = True
        if usage is not None:
            prompt = int(usage.get("prompt_tokens") or 0)
            completion = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        else:
            prompt, cached, completion = admission.decision.est_input_tokens, 0, partial_completion
        cost = cost_micros(admission.price, prompt, cached, completion)
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
