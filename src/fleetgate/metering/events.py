"""The UsageEvent: one immutable money record per request, and the sinks that receive it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

import orjson

EventStatus = Literal["ok", "client_abort", "engine_error", "timeout", "rejected", "gateway_error", "gateway_lost"]
UsageSource = Literal["engine", "partial_count", "estimate", "none"]
# The gateway's own failures: the tokens the engine computed stay on the event (reconcile needs them), but the tenant
# is never charged for them (docs/billing.md, the outcome table).
UNBILLED_STATUSES: frozenset[str] = frozenset({"gateway_error", "gateway_lost"})


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """What one request used, as the engine reported it (never re-tokenized by the gateway).

    `event_id` is the request id (UUIDv7): the ledger inserts keyed by it, so delivering an event twice is a no-op.
    Times are Unix seconds (float). `prompt_tokens` includes `cached_tokens`; fresh input = prompt - cached.
    """

    event_id: str
    tenant_id: str
    key_id: str
    model: str
    adapter: str | None
    replica_id: str | None
    engine: str | None
    gpu_type: str | None
    started_at: float
    first_token_at: float | None
    ended_at: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    status: EventStatus
    usage_source: UsageSource
    stream: bool
    endpoint: str = "chat"
    http_status: int = 200

    def to_json(self) -> bytes:
        """Compact JSON for the outbox and sinks."""
        return orjson.dumps(self)  # orjson serialises dataclasses natively; asdict() deep-copies every field

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ledger rows, API answers)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageEvent:
        """Rebuild from a dict, ignoring unknown keys (forward compatible outbox files)."""
        try:
            return cls(**data)  # the flusher's common case: exactly our fields, no filtering copy
        except TypeError:
            return cls(**{k: v for k, v in data.items() if k in _FIELD_NAMES})

    @property
    def fresh_tokens(self) -> int:
        """Prompt tokens that were not served from the prefix cache."""
        return max(self.prompt_tokens - self.cached_tokens, 0)

    @property
    def busy_seconds(self) -> float:
        """How long the request held its replica: the operator's GPU time, whoever pays for it."""
        return max(self.ended_at - self.started_at, 0.0)

    @property
    def billable(self) -> bool:
        """False for outcomes the gateway caused: their tokens are kept but never charged."""
        return self.status not in UNBILLED_STATUSES


_FIELD_NAMES = frozenset(f.name for f in fields(UsageEvent))


class Ledger(Protocol):
    """The durable, idempotent home of usage events (SQLite or PostgreSQL)."""

    async def insert(self, events: list[UsageEvent]) -> int:
        """Insert events keyed by event_id; already-present ids are skipped. Returns how many were new."""
        ...


class Sink(Protocol):
    """An optional downstream consumer of events (NATS JetStream, webhooks); delivery is at least once."""

    name: str

    async def publish(self, events: list[UsageEvent]) -> None:
        """Deliver a batch; raise to have the flusher retry it later."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
