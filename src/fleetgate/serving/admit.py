"""Admit: who is asking (auth), what they ask (body), may they (policy), is there room for them (limits, queue).

The result is a Ticket: the parsed body, the replicas that can serve it, and what the tenant plane reserved.
Everything here happens before any engine sees the request, so a refusal costs the tenant nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleetgate.config import GatewayConfig
from fleetgate.domain.errors import InvalidRequest, ModelNotFound, UpstreamUnavailable
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.http.asgi import ASGIReceive, read_body
from fleetgate.lora.pool import AdapterPool, can_load
from fleetgate.scheduling.admission import AdmissionController, Slot
from fleetgate.scheduling.fair_queue import PRIORITIES
from fleetgate.serving.body import parse_request
from fleetgate.serving.outcome import RequestOutcome
from fleetgate.tenancy.auth import Principal
from fleetgate.tenancy.gate import Admission, TenantGate

_PRIORITY_HEADER_VALUES = {name: index for index, name in enumerate(PRIORITIES)}


@dataclass(slots=True)
class Ticket:
    """An admitted request: what it asks, who can serve it, what was reserved, and its place on the fleet."""

    payload: dict[str, Any]
    serving: list[Replica]
    admission: Admission
    slot: Slot | None = None  # taken once the admission queue let it through


class Admitter:
    """Authentication, body, policy and limits (`admit`), then the fair queue (`queue`)."""

    def __init__(
        self,
        cfg: GatewayConfig,
        gate: TenantGate,
        registry: ReplicaRegistry,
        adapters: AdapterPool | None,
        admission: AdmissionController | None,
        keeps_bodies: bool,
    ) -> None:
        self.cfg = cfg
        self.gate = gate
        self.registry = registry
        self.adapters = adapters
        self.admission = admission
        self.keeps_bodies = keeps_bodies  # an I/O log exists: opted-in tenants' bodies are kept

    async def admit(self, scope: dict[str, Any], receive: ASGIReceive, outcome: RequestOutcome) -> Ticket:
        """Everything before the queue; raises ApiError (401/403/404/400/429/503) saying what to fix."""
        client = scope.get("client")
        principal = await self.gate.authenticate(_header(scope, b"authorization"), client=client[0] if client else None)
        outcome.tenant_id, outcome.key_id = principal.tenant.id, principal.key.id
        outcome.tenant_name = principal.tenant.external_id
        _read_scheduling_headers(scope, outcome)
        raw = await read_body(receive, self.cfg.max_body_bytes)
        if principal.tenant.io_log and self.keeps_bodies:
            outcome.request_body, outcome.response_parts = raw, []
            outcome.io_retention_days = principal.tenant.io_log_retention_days
        payload = parse_request(raw, outcome.endpoint)
        outcome.stream = payload.get("stream", False)
        serving = self._serving(payload, principal, outcome)
        admission = await self.gate.admit(
            principal,
            payload,
            outcome.request_id,
            model=outcome.model,
            adapter=outcome.lora.name if outcome.lora is not None else None,
            started_at=outcome.started_at,  # the price book in force when the request started, as rating uses
            context_window=min((r.context_len for r in serving if r.context_len), default=None),
            max_choices=self.cfg.max_choices,
        )
        outcome.est_prompt_tokens = admission.decision.est_input_tokens
        return Ticket(payload, serving, admission)

    async def queue(self, ticket: Ticket, outcome: RequestOutcome) -> None:
        """Wait for room on the fleet (fair across tenants, strict across priorities), or raise 429/503."""
        if self.admission is None:
            return
        tenant = ticket.admission.principal.tenant
        priority = PRIORITIES.index(tenant.priority)
        asked = _PRIORITY_HEADER_VALUES.get(outcome.priority_header or "")
        if asked is not None and asked > priority:
            priority = asked  # a client may lower its own priority, never raise it
        cost = ticket.admission.decision.reserve_tokens
        ticket.slot = await self.admission.acquire(
            outcome.model, tenant.id, priority, cost, tenant.weight, outcome.queue_timeout
        )

    def release(self, ticket: Ticket | None) -> None:
        """Give the request's place on the fleet to the next one (any way it ended)."""
        if ticket is not None and ticket.slot is not None and self.admission is not None:
            self.admission.release(ticket.slot)

    def _serving(self, payload: dict[str, Any], principal: Principal, outcome: RequestOutcome) -> list[Replica]:
        """The replicas that can serve the requested model (or LoRA adapter); sets `outcome.model` once known."""
        requested = payload["model"]
        serving = self.registry.serving(requested)
        if serving:
            outcome.model = requested
            return serving
        if self.adapters is not None:
            serving = self._adapter_target(payload, principal, outcome)
            if serving:
                return serving
        raise self._no_replica_for(requested, principal)

    def _adapter_target(self, payload: dict[str, Any], principal: Principal, outcome: RequestOutcome) -> list[Replica]:
        """Resolve a `model` naming a LoRA adapter (`adapter` or `base:adapter`): the replicas that can serve it."""
        assert self.adapters is not None
        target = self.adapters.catalog.resolve(payload["model"], principal.tenant, self.registry.models())
        if target.adapter is None:
            return []
        lora = target.adapter
        serving = self.registry.serving(target.model)
        if not serving:
            return []
        outcome.model, outcome.lora = target.model, lora
        payload["model"] = lora.name  # vLLM selects an adapter by its name as the model
        capable = [r for r in serving if lora.name in r.adapters or can_load(r)]
        if not capable:
            raise UpstreamUnavailable(
                f"no replica of `{target.model}` can serve LoRA adapter `{lora.name}`: its replicas"
                f" ({', '.join(r.kind for r in serving)}) cannot load adapters at run time; add a vLLM replica",
                retry_after=30,
            )
        return capable

    def _no_replica_for(self, model: str, principal: Principal) -> ModelNotFound | UpstreamUnavailable:
        # An engine never reached has told us no models yet: the model may be its, so don't claim it doesn't exist.
        if any(not r.models and not r.healthy for r in self.registry.all()):
            return UpstreamUnavailable(
                "cannot serve this model right now: some engines are unreachable and their models are not known"
                " yet; retry shortly",
                retry_after=2,
            )
        # Only the models this tenant may use: the error must not map the rest of the fleet for it.
        mine = sorted(m for m in self.registry.models() if principal.tenant.allows_model(m))
        return ModelNotFound(
            f"The model `{model[:100]}` does not exist or you do not have access to it. Available models:"
            f" {', '.join(mine) or 'none'}",
            param="model",
        )


def _read_scheduling_headers(scope: dict[str, Any], outcome: RequestOutcome) -> None:
    for key, value in scope["headers"]:
        if key == b"x-fleetgate-priority":
            outcome.priority_header = bytes(value).decode("latin-1").strip().lower()
        elif key == b"x-session-id":
            outcome.session = bytes(value).decode("latin-1").strip()[:256] or None
        elif key == b"x-fleetgate-queue-timeout":
            try:
                seconds = float(bytes(value))
            except ValueError:
                seconds = math.nan
            if not math.isfinite(seconds) or seconds < 0:
                raise InvalidRequest("x-fleetgate-queue-timeout must be a finite, non-negative number of seconds")
            outcome.queue_timeout = seconds


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
