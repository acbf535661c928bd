"""Recovering a dead gateway's outbox: its started-but-unfinished requests become gateway_lost events.

The GPU time was spent, so the operator must see those requests: each is billed from its start record (the
engine's prompt count if one was recorded, else the gateway's estimate) with 0 completion tokens. A malformed
record in a dead outbox is skipped, never a reason to stop recovering the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fleetgate.metering.events import UsageEvent
from fleetgate.metering.outbox import Outbox
from fleetgate.metering.records import StartRecord, parse_lines

log = logging.getLogger(__name__)


def lost_event(start: StartRecord, prompt_tokens: int | None, ended_at: float) -> UsageEvent:
    """The event for a request whose gateway died: GPU time was spent, so the operator must see it."""
    return UsageEvent(
        event_id=start.id,
        tenant_id=start.tenant_id,
        key_id=start.key_id,
        model=start.model,
        adapter=start.adapter,
        replica_id=start.replica_id,
        engine=start.engine,
        gpu_type=start.gpu_type,
        started_at=start.started_at,
        first_token_at=None,
        ended_at=ended_at,
        prompt_tokens=prompt_tokens if prompt_tokens is not None else start.est_prompt_tokens,
        cached_tokens=0,
        completion_tokens=0,  # unknown: the stream died with the gateway
        status="gateway_lost",
        usage_source="engine" if prompt_tokens is not None else "estimate",
        stream=start.stream,
        endpoint=start.endpoint,
        http_status=0,
    )


async def recover_lost(outbox: Outbox, segments: list[Path]) -> int:
    """Write a gateway_lost event to `outbox` for each request the dead owner's segments started and never
    finished; returns how many."""
    open_starts: dict[str, StartRecord] = {}
    counted: dict[str, int] = {}
    last_seen = 0.0
    for path in segments:
        data = await asyncio.to_thread(path.read_bytes)
        last_seen = max(last_seen, path.stat().st_mtime)
        for _, record in parse_lines(data)[0]:
            try:
                _replay(record, open_starts, counted)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("skipping a malformed record in %s", path.name)
    for start in open_starts.values():
        outbox.finished(lost_event(start, counted.get(start.id), last_seen or time.time()))
    return len(open_starts)


def _replay(record: dict[str, Any], open_starts: dict[str, StartRecord], counted: dict[str, int]) -> None:
    """Apply one record of a dead owner's outbox to what is still open."""
    kind = record.get("t")
    if kind == "s":
        start = StartRecord.from_dict(record)
        if isinstance(start.id, str):
            open_starts[start.id] = start
    elif kind == "p":
        counted[str(record["id"])] = int(record["n"])
    elif kind == "f":
        open_starts.pop(record["e"]["event_id"], None)
