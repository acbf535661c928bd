"""One request's parsed body and everything observed about it on its way through the gateway."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from fleetgate.errors import InvalidRequest
from fleetgate.fleet.replicas import Replica
from fleetgate.metering.capture import Measured
from fleetgate.metering.events import EventStatus
from fleetgate.tenancy.adapter_registry import Adapter

Endpoint = Literal["chat", "completions"]
ENDPOINT_PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(slots=True)
class RequestOutcome:
    """What happened to one request; metering reads it when the request ends."""

    request_id: str
    endpoint: Endpoint
    tenant_id: str = ""
    key_id: str = ""
    tenant_name: str = ""
    model: str = ""  # the base model (the replicas serve it; metering bills it, with the adapter)
    lora: Adapter | None = None  # the LoRA adapter the request named, if any
    adapter_load: str | None = None  # "cold" when this request waited for its adapter to load, else "warm"
    stream: bool = False
    replica: Replica | None = None
    route: str = "-"
    status: EventStatus = "ok"
    http_status: int = 200
    usage: dict[str, Any] | None = None
    attempts: int = 0
    started_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    events: int = 0
    content_events: int = 0
    est_prompt_tokens: int = 0
    begun: bool = False  # a start record was written
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


def parse_request(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """Parse and minimally validate an OpenAI request body; raise InvalidRequest saying what to fix."""
    if not body:
        raise InvalidRequest("request body is empty: send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string", param="model")
    if endpoint == "chat":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("`messages` is required and must be a non-empty array", param="messages")
    elif "prompt" not in payload:
        raise InvalidRequest("`prompt` is required", param="prompt")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    return payload
