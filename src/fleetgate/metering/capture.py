"""Usage capture: the one place that turns a request's outcome into outbox records.

Usage comes from the engine's own `usage` block. When it never arrives (client hung up, engine broke), the
completion is counted from the content chunks already relayed and the prompt by the engine's tokenizer, called
off the hot path; the event says `usage_source=partial_count`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from fleetgate.domain.usage import Usage
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica
from fleetgate.fleet.tokenize import count_prompt_tokens
from fleetgate.metering.events import EventStatus, UsageEvent, UsageSource
from fleetgate.metering.outbox import Outbox, StartRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InFlight:
    """A request between its start record and its finish record."""

    payload: dict[str, Any]
    replica: Replica
    started: float
    prompt_tokens: int | None = None
    counting: bool = False


@dataclass(slots=True)
class Measured:
    """What the relay observed, handed to `finish`."""

    request_id: str
    tenant_id: str
    key_id: str
    model: str
    endpoint: str
    stream: bool
    status: EventStatus
    http_status: int
    started_at: float
    first_token_at: float | None
    usage: Usage | None
    content_events: int
    est_prompt_tokens: int
    replica: Replica | None
    adapter: str | None = None


class UsageCapture:
    """Writes start and finish records; counts prompts with the engine's tokenizer when usage is missing."""

    def __init__(self, outbox: Outbox, client: EngineClient, tokenize_after: float = 0.5) -> None:
        self.outbox = outbox
        self.client = client
        self.tokenize_after = tokenize_after
        self._inflight: dict[str, InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.events_written = 0

    def start(self) -> None:
        """Start the sweeper that gets prompt counts for long-running requests (for gateway_lost billing)."""
        self._sweeper = asyncio.create_task(self._sweep(), name="fleetgate-prompt-counter")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the sweeper and wait (bounded) for pending finish records."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    def begin(self, m: Measured, replica: Replica, payload: dict[str, Any]) -> None:
        """Record the start, before the engine sees the request."""
        self.outbox.started(
            StartRecord(
                id=m.request_id,
                tenant_id=m.tenant_id,
                key_id=m.key_id,
                model=m.model,
                adapter=m.adapter,
                replica_id=replica.id,
                engine=replica.kind,
                gpu_type=replica.gpu_type,
                started_at=m.started_at,
                stream=m.stream,
                endpoint=m.endpoint,
                est_prompt_tokens=m.est_prompt_tokens,
            )
        )
        self._inflight[m.request_id] = InFlight(payload, replica, time.monotonic())

    def finish(self, m: Measured) -> None:
        """Write the finish record now, or after the engine counted the prompt when usage is missing."""
        inflight = self._inflight.get(m.request_id)
        if m.usage is not None or inflight is None:
            self._write(m, inflight)
            return
        task = asyncio.create_task(self._count_then_write(m, inflight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _count_then_write(self, m: Measured, inflight: InFlight) -> None:
        if inflight.prompt_tokens is None:
            inflight.prompt_tokens = await count_prompt_tokens(
                self.client, inflight.replica.kind, inflight.replica.url, inflight.payload
            )
        self._write(m, inflight)

    def _write(self, m: Measured, inflight: InFlight | None) -> None:
        self._inflight.pop(m.request_id, None)
        source: UsageSource
        usage = m.usage
        if usage is not None:
            prompt, cached, completion = usage
            source = "engine"
        elif inflight is None:
            prompt = cached = completion = 0  # never reached an engine
            source = "none"
        else:
            counted = inflight.prompt_tokens
            prompt = counted if counted is not None else m.est_prompt_tokens
            cached, completion = 0, m.content_events
            source = "partial_count" if counted is not None else "estimate"
        replica = m.replica
        event = UsageEvent(
            event_id=m.request_id,
            tenant_id=m.tenant_id,
            key_id=m.key_id,
            model=m.model,
            adapter=m.adapter,
            replica_id=replica.id if replica else None,
            engine=replica.kind if replica else None,
            gpu_type=replica.gpu_type if replica else None,
            started_at=m.started_at,
            first_token_at=m.first_token_at,
            ended_at=time.time(),
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            status=m.status,
            usage_source=source,
            stream=m.stream,
            endpoint=m.endpoint,
            http_status=m.http_status,
        )
        self.outbox.finished(event)
        self.events_written += 1

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(self.tokenize_after / 2, 0.1))
            now = time.monotonic()
            for rid, inflight in list(self._inflight.items()):
                if inflight.counting or inflight.prompt_tokens is not None:
                    continue
                if now - inflight.started >= self.tokenize_after:
                    inflight.counting = True
                    task = asyncio.create_task(self._count_running(rid, inflight))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _count_running(self, rid: str, inflight: InFlight) -> None:
        count = await count_prompt_tokens(self.client, inflight.replica.kind, inflight.replica.url, inflight.payload)
        if count is not None:
            inflight.prompt_tokens = count
            if rid in self._inflight:
                self.outbox.prompt_counted(rid, count)
