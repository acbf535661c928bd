"""The flusher: delivers outbox records to the ledger and sinks at least once, and adopts dead processes' outboxes.

Delivery is at least once by design; the ledger inserts keyed by event_id and NATS de-duplicates by
`Nats-Msg-Id`, so a replay after a crash is a no-op. A segment is deleted only when the ledger and every sink
have consumed it and its writer has moved on (rotated, stopped or died).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.metering.events import Ledger, Sink, UsageEvent
from fleetgate.metering.ledger_worker import LedgerWorker
from fleetgate.metering.outbox import (
    LOCK_SUFFIX,
    Outbox,
    StartRecord,
    finished_events,
    parse_lines,
    parse_segment_name,
)

log = logging.getLogger(__name__)
LEDGER = "ledger"


@dataclass
class _Consumer:
    name: str
    deliver: Any  # async (list[UsageEvent]) -> object
    failing_since: float | None = None
    retry_at: float = 0.0
    delivered: int = 0
    failures: int = 0


@dataclass
class _Segment:
    path: Path
    owner: str
    seq: int
    offsets: dict[str, int] = field(default_factory=dict)

    @property
    def ckpt(self) -> Path:
        return self.path.with_suffix(".ckpt")


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


class Flusher:
    """Moves finished events from outbox segments to the ledger and sinks; recovers orphaned outboxes."""

    def __init__(
        self,
        outbox: Outbox,
        ledger: Ledger,
        sinks: list[Sink] | None = None,
        interval: float = 0.2,
        batch_size: int = 500,
        ledger_worker: LedgerWorker | None = None,
    ) -> None:
        self.outbox = outbox
        self.interval = interval
        self.batch_size = batch_size
        self.ledger_worker = ledger_worker  # takes busy passes' ledger inserts out of this process
        self.consumers = [_Consumer(LEDGER, ledger.insert)]
        self.consumers += [_Consumer(s.name, s.publish) for s in sinks or []]
        self._adopted: dict[str, int] = {}  # dead owner -> fd of its lock, held while we drain it
        self._task: asyncio.Task[None] | None = None
        self.recovered_lost = 0

    @property
    def backlog_segments(self) -> int:
        """Segment files waiting in the outbox directory."""
        return sum(1 for _ in self.outbox.directory.glob("*.log"))

    def consumer_state(self) -> list[tuple[str, float, int]]:
        """(name, seconds failing or 0, events delivered) per consumer, for metrics."""
        now = time.monotonic()
        return [
            (c.name, now - c.failing_since if c.failing_since is not None else 0.0, c.delivered) for c in self.consumers
        ]

    def start(self) -> None:
        """Run the delivery loop in the background."""
        self._task = asyncio.create_task(self._loop(), name="fleetgate-flusher")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and make one last bounded attempt to deliver everything."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.flush_once()
        if self.ledger_worker is not None:
            await asyncio.to_thread(self.ledger_worker.close)

    async def _loop(self) -> None:
        while True:
            try:
                await self.flush_once()
            except OSError as exc:
                log.error("outbox flush failed: %s", exc)
            await asyncio.sleep(self.interval)

    def _adopt_orphans(self) -> list[str]:
        adopted: list[str] = []
        for lock in self.outbox.directory.glob(f"*{LOCK_SUFFIX}"):
            owner = lock.name[: -len(LOCK_SUFFIX)]
            if owner == self.outbox.owner or owner in self._adopted:
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                continue  # another process finished draining it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # its owner is alive
                continue
            self._adopted[owner] = fd
            adopted.append(owner)
        return adopted

    def _segments(self) -> list[_Segment]:
        owners = {self.outbox.owner, *self._adopted}
        found: list[_Segment] = []
        for path in self.outbox.directory.glob("*.log"):
            parsed = parse_segment_name(path.name)
            if parsed is not None and parsed[0] in owners:
                found.append(_Segment(path, parsed[0], parsed[1]))
        return sorted(found, key=lambda s: (s.owner, s.seq))

    async def _recover(self, owner: str) -> None:
        """Turn a dead owner's started-but-unfinished requests into gateway_lost events in our own outbox."""
        open_starts: dict[str, StartRecord] = {}
        counted: dict[str, int] = {}
        last_seen = 0.0
        for segment in [s for s in self._segments() if s.owner == owner]:
            data = await asyncio.to_thread(segment.path.read_bytes)
            last_seen = max(last_seen, segment.path.stat().st_mtime)
            for _, record in parse_lines(data)[0]:
                kind = record.get("t")
                if kind == "s":
                    open_starts[record["id"]] = StartRecord.from_dict(record)
                elif kind == "p":
                    counted[record["id"]] = int(record["n"])
                elif kind == "f":
                    open_starts.pop(record["e"]["event_id"], None)
        for start in open_starts.values():
            self.outbox.finished(lost_event(start, counted.get(start.id), last_seen or time.time()))
            self.recovered_lost += 1
        if open_starts:
            log.warning("recovered %d request(s) cut off when gateway %s died", len(open_starts), owner)

    async def flush_once(self) -> int:
        """One pass: adopt orphans, deliver what is new, delete what is fully consumed. Returns events to ledger."""
        for owner in self._adopt_orphans():
            await self._recover(owner)
        delivered = 0
        for segment in self._segments():
            delivered += await self._drain(segment)
        self._release_drained_orphans()
        return delivered

    def _read_offsets(self, segment: _Segment) -> None:
        try:
            segment.offsets = {k: int(v) for k, v in json.loads(segment.ckpt.read_text()).items()}
        except (OSError, ValueError):
            segment.offsets = {}

    async def _drain(self, segment: _Segment) -> int:
        self._read_offsets(segment)
        start = min((segment.offsets.get(c.name, 0) for c in self.consumers), default=0)
        data = await asyncio.to_thread(_read_from, segment.path, start)
        end = start + data.rfind(b"\n") + 1  # whole lines only: a torn tail waits for the next pass
        finished: list[tuple[int, dict[str, Any]]] | None = None  # parsed only if a consumer needs them here
        worker = self.ledger_worker
        to_ledger = 0
        now = time.monotonic()
        changed = False
        for consumer in self.consumers:
            offset = segment.offsets.get(consumer.name, 0)
            if offset >= end or now < consumer.retry_at:
                continue
            try:
                if consumer.name == LEDGER and worker is not None and worker.takes(end - offset):
                    delivered = await worker.insert_range(segment.path, offset, end)
                else:
                    if finished is None:
                        finished = finished_events(data, start)
                    events = [UsageEvent.from_dict(e) for at, e in finished if at > offset]
                    for i in range(0, len(events), self.batch_size):
                        await consumer.deliver(events[i : i + self.batch_size])
                    delivered = len(events)
            except Exception as exc:  # a consumer's outage must never stop the others or serving
                self._failed(consumer, exc, now)
                continue
            if consumer.failing_since is not None:
                log.warning("%s is back after %.1fs; catching up", consumer.name, now - consumer.failing_since)
            consumer.failing_since, consumer.failures = None, 0
            consumer.delivered += delivered
            segment.offsets[consumer.name] = end
            changed = True
            if consumer.name == LEDGER:
                to_ledger += delivered
        if changed:
            await asyncio.to_thread(_write_ckpt, segment)
        writer_done = segment.path != self.outbox.active_segment
        size = segment.path.stat().st_size if segment.path.exists() else 0
        consumed = all(segment.offsets.get(c.name, 0) >= size for c in self.consumers)
        if writer_done and consumed and end == size:
            segment.path.unlink(missing_ok=True)
            segment.ckpt.unlink(missing_ok=True)
        return to_ledger

    def _failed(self, consumer: _Consumer, exc: Exception, now: float) -> None:
        consumer.failures += 1
        if consumer.failing_since is None:
            consumer.failing_since = now
            log.warning("%s unavailable (%s: %s); events stay in the outbox", consumer.name, type(exc).__name__, exc)
        consumer.retry_at = now + min(0.5 * 2 ** min(consumer.failures, 4), 5.0)

    def _release_drained_orphans(self) -> None:
        remaining = {s.owner for s in self._segments()}
        for owner, fd in list(self._adopted.items()):
            if owner in remaining:
                continue
            (self.outbox.directory / f"{owner}{LOCK_SUFFIX}").unlink(missing_ok=True)
            os.close(fd)
            del self._adopted[owner]


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def _write_ckpt(segment: _Segment) -> None:
    tmp = segment.ckpt.with_suffix(".tmp")
    tmp.write_text(json.dumps(segment.offsets))
    tmp.replace(segment.ckpt)
