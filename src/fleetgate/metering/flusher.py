"""The flusher: delivers outbox records to the ledger and sinks at least once, and adopts dead processes' outboxes.

Delivery is at least once by design; the ledger inserts keyed by event_id and NATS de-duplicates by
`Nats-Msg-Id`, so a replay after a crash is a no-op. A segment is deleted only when the ledger and every sink
have consumed it and its writer has moved on (rotated, stopped or died).

Nothing stops it for good: a pass that fails is logged and retried with back-off; a poison record (a finish
record that is not a valid event, or that the ledger refuses with a data error) is quarantined in the dead-letter
folder and delivery moves on; a sink more than `sink_max_backlog_bytes` behind has its oldest records (of
segments the ledger already has) dead-lettered, so a sink down for days cannot fill the disk (dead_letter.py).

For /readyz and metrics: `running`, `pass_failures`, `last_error`, `dead_lettered` and `dead_letter_dropped`
(per consumer), `backlog_bytes` (per sink), `consumer_state()`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.metering.dead_letter import DEAD_LETTER_DIR, DeadLetters
from fleetgate.metering.delivery import LEDGER, Consumer, Records, deliver_sink, insert_isolating, is_poison_error
from fleetgate.metering.disk import outbox_bytes
from fleetgate.metering.events import Ledger, Sink
from fleetgate.metering.ledger_worker import LedgerWorker
from fleetgate.metering.outbox import Outbox
from fleetgate.metering.records import LOCK_SUFFIX, finished_events, parse_segment_name
from fleetgate.metering.recovery import lost_event, recover_lost

log = logging.getLogger(__name__)
__all__ = ["Flusher", "lost_event"]
MAX_BACKOFF = 30.0  # seconds between passes while passes keep failing


@dataclass
class _Segment:
    path: Path
    owner: str
    seq: int
    offsets: dict[str, int] = field(default_factory=dict)
    end: int = 0  # end of the last complete line read
    size: int = 0

    @property
    def ckpt(self) -> Path:
        return self.path.with_suffix(".ckpt")


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
        *,
        sink_max_backlog_bytes: int | None = None,
        dead_letter_max_bytes: int = 1 << 30,
    ) -> None:
        self.outbox = outbox
        self.interval = interval
        self.batch_size = batch_size
        self.ledger_worker = ledger_worker  # takes busy passes' ledger inserts out of this process
        self.sink_max_backlog_bytes = sink_max_backlog_bytes
        self.dead_letters = DeadLetters(outbox.directory / DEAD_LETTER_DIR, dead_letter_max_bytes)
        self.consumers = [Consumer(LEDGER, ledger.insert)]
        self.consumers += [Consumer(s.name, s.publish) for s in sinks or []]
        self._adopted: dict[str, int] = {}  # dead owner -> fd of its lock, held while we drain it
        self._task: asyncio.Task[None] | None = None
        self.recovered_lost = 0
        self.pass_failures = 0
        self.last_error: str | None = None  # of the last failed pass, until a pass succeeds
        self.backlog_bytes: dict[str, int] = {}  # per sink: outbox bytes it has not consumed

    @property
    def dead_lettered(self) -> dict[str, int]:
        """Records set aside per consumer: the ledger's are poison records, a sink's its backlog past the bound."""
        return self.dead_letters.written

    @property
    def dead_letter_dropped(self) -> dict[str, int]:
        """Records lost per consumer because the dead-letter folder was at its bound."""
        return self.dead_letters.dropped

    @property
    def running(self) -> bool:
        """Whether the delivery loop is alive."""
        return self._task is not None and not self._task.done()

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
        self._task.add_done_callback(_report_exit)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and make one last bounded attempt to deliver everything."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            async with asyncio.timeout(timeout):
                await self.flush_once()
        except TimeoutError:
            log.warning("the last delivery before shutdown did not finish in %.0fs; the outbox keeps the rest", timeout)
        except Exception:
            log.exception("the last delivery before shutdown failed; the outbox keeps the rest")
        if self.ledger_worker is not None:
            await asyncio.to_thread(self.ledger_worker.close)

    async def _loop(self) -> None:
        failures = 0
        while True:
            delay = self.interval
            try:
                await self.flush_once()
            except Exception as exc:  # a pass must never kill delivery: log, back off, go on
                failures += 1
                self.pass_failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if failures == 1 or failures % 100 == 0:
                    # A full or failing disk is an expected fault: one line. Anything else is a bug: its traceback.
                    log.error(
                        "outbox delivery pass failed (%d in a row; %s); retrying with back-off",
                        failures,
                        self.last_error,
                        exc_info=not isinstance(exc, OSError),
                    )
                delay = min(self.interval * 2 ** min(failures, 8), MAX_BACKOFF)
            else:
                if failures:
                    log.warning("outbox delivery passes work again after %d failures", failures)
                failures, self.last_error = 0, None
            await asyncio.sleep(delay)

    async def flush_once(self) -> int:
        """One pass: adopt orphans, deliver what is new, bound sink backlogs, delete what is fully consumed.
        Returns events delivered to the ledger."""
        # Recovery writes lost events through our outbox: while it keeps records in memory (full disk) a crash
        # would lose them, and the dead owner's starts with them once its segments are deleted. So wait.
        if self.outbox.writable:
            for owner in self._adopt_orphans():
                await self._recover(owner)
        delivered = 0
        segments = self._segments()
        for segment in segments:
            delivered += await self._drain(segment)
        await self._bound_sink_backlogs(segments)
        self._release_drained_orphans()
        marker = self.outbox.appended_bytes
        self.outbox.note_disk_use(await asyncio.to_thread(outbox_bytes, self.outbox.directory), marker)
        return delivered

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
        found = await recover_lost(self.outbox, [s.path for s in self._segments() if s.owner == owner])
        self.recovered_lost += found
        if found:
            log.warning("recovered %d request(s) cut off when gateway %s died", found, owner)

    def _read_offsets(self, segment: _Segment) -> None:
        try:
            segment.offsets = {k: int(v) for k, v in json.loads(segment.ckpt.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            segment.offsets = {}

    async def _drain(self, segment: _Segment) -> int:
        self._read_offsets(segment)
        start = min((segment.offsets.get(c.name, 0) for c in self.consumers), default=0)
        data = await asyncio.to_thread(_read_from, segment.path, start)
        segment.end = start + data.rfind(b"\n") + 1  # whole lines only: a torn tail waits for the next pass
        segment.size = start + len(data)
        records = Records(data, start)  # parsed only if a consumer needs them in this process
        to_ledger = 0
        now = time.monotonic()
        changed = False
        for consumer in self.consumers:
            offset = segment.offsets.get(consumer.name, 0)
            if offset >= segment.end or now < consumer.retry_at:
                continue
            try:
                if consumer.name == LEDGER:
                    delivered = await self._deliver_ledger(consumer, segment, records, offset)
                else:
                    delivered = await deliver_sink(consumer, records.events_after(offset), self.batch_size)
            except Exception as exc:  # a consumer's outage must never stop the others or serving
                consumer.failed(exc, now)
                continue
            consumer.succeeded(delivered, now)
            segment.offsets[consumer.name] = segment.end
            changed = True
            if consumer.name == LEDGER:
                to_ledger += delivered
        if changed:
            await asyncio.to_thread(_write_ckpt, segment)
        self._delete_if_done(segment)
        return to_ledger

    async def _deliver_ledger(self, consumer: Consumer, segment: _Segment, records: Records, offset: int) -> int:
        worker = self.ledger_worker
        if worker is not None and worker.takes(segment.end - offset):
            try:
                result = await worker.insert_range(segment.path, offset, segment.end)
            except Exception as exc:
                if not is_poison_error(exc):
                    raise  # an outage, or the worker died: this pass fails, the range is retried
                log.warning("the ledger refused a range from the worker (%s); isolating the record(s) here", exc)
            else:
                await self._quarantine(segment.path, [(raw, "not a valid usage event") for raw in result.poison])
                return result.inserted
        found = records.after(offset)
        poison = [(raw, "not a valid usage event") for _, event, raw in found if event is None]
        events = [event for _, event, _ in found if event is not None]
        refused = await insert_isolating(consumer, events, self.batch_size)
        poison += [(event.to_dict(), f"the ledger refused it: {type(exc).__name__}") for event, exc in refused]
        await self._quarantine(segment.path, poison)
        return len(events) - len(refused)

    async def _quarantine(self, segment: Path, poison: list[tuple[Any, str]]) -> None:
        """Set poison records aside for the ledger (durably, before its checkpoint moves past them)."""
        for record, reason in poison:
            event_id = record.get("event_id") if isinstance(record, dict) else None
            log.error(
                "quarantined a usage record the ledger cannot take (event_id %.64r, %s) in %s",
                event_id,
                reason,
                self.dead_letters.path(LEDGER),
            )
        by_reason: dict[str, list[Any]] = {}
        for record, reason in poison:
            by_reason.setdefault(reason, []).append(record)
        for reason, records in by_reason.items():
            await asyncio.to_thread(self.dead_letters.add, LEDGER, reason, segment.name, records)

    def _delete_if_done(self, segment: _Segment) -> None:
        if segment.path == self.outbox.active_segment:
            return
        try:
            segment.size = segment.path.stat().st_size
        except FileNotFoundError:
            return
        if any(segment.offsets.get(c.name, 0) < segment.end for c in self.consumers):
            return
        if segment.end != segment.size:
            if segment.owner == self.outbox.owner:
                return  # rotated during this pass: the rest is read next pass
            # A dead writer's torn last line can never complete; everything before it is delivered.
            log.warning("discarding a torn %d-byte tail of %s", segment.size - segment.end, segment.path.name)
        segment.path.unlink(missing_ok=True)
        segment.ckpt.unlink(missing_ok=True)

    async def _bound_sink_backlogs(self, segments: list[_Segment]) -> None:
        for consumer in self.consumers[1:]:
            behind = sum(max(s.size - s.offsets.get(consumer.name, 0), 0) for s in segments if s.path.exists())
            self.backlog_bytes[consumer.name] = behind
            limit = self.sink_max_backlog_bytes
            if limit is None or behind <= limit:
                continue
            # Only segments the ledger already has: dead-lettering one the ledger still needs frees no disk.
            done = [s for s in segments if self._sink_may_drop(s, consumer.name)]
            for segment in sorted(done, key=lambda s: _mtime(s.path)):
                if behind <= limit:
                    break
                behind -= await self._dead_letter_rest(consumer, segment, behind, limit)
            self.backlog_bytes[consumer.name] = behind

    def _sink_may_drop(self, segment: _Segment, name: str) -> bool:
        return (
            segment.path != self.outbox.active_segment
            and segment.path.exists()
            and segment.offsets.get(LEDGER, 0) >= segment.end
            and segment.offsets.get(name, 0) < segment.end
        )

    async def _dead_letter_rest(self, consumer: Consumer, segment: _Segment, behind: int, limit: int) -> int:
        """Move a sink's undelivered records of one segment to its dead-letter file; returns the bytes freed."""
        offset = segment.offsets.get(consumer.name, 0)
        data = await asyncio.to_thread(_read_from, segment.path, offset)
        records = [event for at, event in finished_events(data[: segment.end - offset], offset)]
        try:
            kept = await asyncio.to_thread(
                self.dead_letters.add, consumer.name, "sink_backlog", segment.path.name, records
            )
        except OSError as exc:
            log.error("cannot dead-letter %s's backlog (%s); it stays in the outbox", consumer.name, exc)
            return 0
        log.warning(
            "%s is %d bytes behind (limit %d, metering.sink_max_backlog_bytes): moved %d event(s) of %s to %s",
            consumer.name,
            behind,
            limit,
            kept,
            segment.path.name,
            self.dead_letters.path(consumer.name),
        )
        segment.offsets[consumer.name] = segment.end
        await asyncio.to_thread(_write_ckpt, segment)
        self._delete_if_done(segment)
        return max(segment.size - offset, 0)

    def _release_drained_orphans(self) -> None:
        remaining = {s.owner for s in self._segments()}
        for owner, fd in list(self._adopted.items()):
            if owner in remaining:
                continue
            (self.outbox.directory / f"{owner}{LOCK_SUFFIX}").unlink(missing_ok=True)
            os.close(fd)
            del self._adopted[owner]


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the outbox flusher stopped: usage events are no longer delivered", exc_info=task.exception())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


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
