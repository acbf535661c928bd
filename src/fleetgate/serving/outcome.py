"""One request's outcome: everything observed about it on its way through the gateway, read once when it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from fleetgate.domain.usage import Usage
from fleetgate.fleet.replicas import Replica
from fleetgate.lora.catalog import Adapter
from fleetgate.metering.capture import Measured
from fleetgate.metering.events import EventStatus

Endpoint = Literal["chat", "completions"]
ENDPOINT_PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
UNKNOWN_MODEL = "-"


@dataclass(slots=True)
class RequestOutcome:
    """What happened to one request; metering, limits and metrics read it when the request ends."""

    request_id: str
    endpoint: Endpoint
    tenant_id: str = ""
    key_id: str = ""
    tenant_name: str = ""
    # The base model, set only once the fleet is known to serve it: a name a client made up never becomes a metric
    # label or a ledger row of its own (refusals before that are all recorded under UNKNOWN_MODEL).
    model: str = UNKNOWN_MODEL
    lora: Adapter | None = None  # the LoRA adapter the request named, if any
    adapter_load: str | None = None  # "cold" when this request waited for its adapter to load, else "warm"
    stream: bool = False
    replica: Replica | None = None
    route: str = "-"
    status: EventStatus = "ok"
    http_status: int = 200
    usage: Usage | None = None  # the engine's counts, read once where its usage block arrived
    attempts: int = 0
    started_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    events: int = 0
    content_events: int = 0
    est_prompt_tokens: int = 0
    begun: bool = False  # a start record was written: an engine may have seen the request
    response_started: bool = False  # the client got a status line: an error can only end the stream now
    recorded: bool = False  # the finish record was written
    # Only for tenants that opted in to the I/O log: what to keep (redacted later, off the hot path).
    request_body: bytes | None = None
    response_parts: list[bytes] | None = None
    io_retention_days: float | None = None
    session: str | None = None  # x-session-id: session affinity key (else the body's `user`)
    priority_header: str | None = None  # x-fleetgate-priority: may lower the tenant's priority
    queue_timeout: float | None = None  # x-fleetgate-queue-timeout: may shorten the queue deadline

    def measured(self) -> Measured:
        """The metering view of this outcome."""
        return Measured(
            request_id=self.request_id,
            tenant_id=self.tenant_id,
            key_id=self.key_id,
            model=self.model,
            endpoint=self.endpoint,
            stream=self.stream,
            status=self.status,
            http_status=self.http_status,
            started_at=self.started_at,
            first_token_at=self.first_byte_at,
            usage=self.usage,
            content_events=self.content_events,
            est_prompt_tokens=self.est_prompt_tokens,
            replica=self.replica,
            adapter=self.lora.name if self.lora is not None else None,
        )

    def fail(self, status: EventStatus, http_status: int) -> None:
        """Set how the request ended badly (the finish record, limits and metrics all read these two)."""
        self.status, self.http_status = status, http_status
