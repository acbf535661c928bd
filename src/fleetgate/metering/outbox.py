"""The outbox: append-only segment files that take usage records off the hot path.

Why a plain file: `os.write` to an O_APPEND descriptor lands in the page cache in microseconds and survives the
process being SIGKILLed (only a machine crash loses unsynced pages, bounded by a periodic fsync). A SQLite
commit per request would cost more and block the event loop.

Layout, in one directory shared by every gateway process on the machine:
- `<owner>.lock`: flocked by the owning process for its lifetime; a free lock means the owner is dead and its
  segments can be adopted (see flusher.py).
- `<owner>-<seq>.log`: records, one JSON object per line: `{"t":"s",...}` a request started (before the engine
  sees it), `{"t":"p","id":...,"n":N}` the engine counted its prompt, `{"t":"f","e":{UsageEvent}}` it finished.
  On rotation the starts still open are copied into the new segment, so a delivered segment can be deleted.
- `<owner>-<seq>.ckpt`: how far the ledger and each sink have consumed that segment (written by the flusher).
- `dead-letter/`: records the flusher set aside (see dead_letter.py).

Full disk (the rule: never serve a request whose start is not on disk, never lose one that was served, never
leak a reservation): `started` raises OutboxUnavailable (the hot path answers 503 with Retry-After) when its line
cannot be written whole, while finish records wait in memory, after an fsync failed, and when the outbox is over
its disk budget or the filesystem under its free-space floor. `finished` and `prompt_counted` never raise: a line
the disk refuses is kept, in order, and written by the next tick; since starts are refused meanwhile, what is
kept is bounded by the requests in flight. A line is written whole or not at all (disk.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from fleetgate.domain.errors import FleetgateError
from fleetgate.metering.disk import DiskGuard, TornWrite, Write, outbox_bytes, write_whole
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.records import (
    COUNTED_PREFIX,
    FINISH_PREFIX,
    LOCK_SUFFIX,
    StartRecord,
    parse_lines,
    segment_name,
)

log = logging.getLogger(__name__)

# The record format lives in records.py; these names are re-exported for the callers that used them from here.
__all__ = ["Outbox", "OutboxUnavailable", "StartRecord", "parse_lines", "segment_name"]
RETRY_INTERVAL = 0.1  # seconds between attempts to write kept records (and the background tick's period)
# Seconds a refused client should wait, per refusal reason: a full disk frees slowly, a write hiccup fast.
RETRY_AFTER = {"write_failed": 1.0, "finish_pending": 1.0, "fsync_failed": 1.0, "disk_budget": 5.0, "disk_free": 5.0}


class OutboxUnavailable(FleetgateError):
    """A new request's start record cannot be made durable: serve nothing, answer 503 with `retry_after`.

    Not an OSError on purpose: the relay reads OSError as "the client went away"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"usage metering cannot record new requests right now ({reason.replace('_', ' ')})")
        self.reason = reason
        self.retry_after = RETRY_AFTER.get(reason, 1.0)


class Outbox:
    """Appends records for this process; one instance per gateway process.

    For /readyz and metrics: `accepting`, `refusal_reason`, `refused` (starts refused, per reason),
    `pending_lines`, `write_failures`, `fsync_failures`, `dropped_lines`, `disk_used`."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = 16 << 20,
        fsync_interval: float = 0.1,
        *,
        max_bytes: int | None = None,
        min_free_bytes: int = 0,
        max_pending: int = 10_000,
        disk_check_interval: float = 0.1,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.max_pending = max_pending
        # Unique per instance: a PID alone is reused, and tests run several gateways in one process.
        self.owner = f"{os.getpid()}x{time.time_ns() // 1_000_000}x{secrets.token_hex(3)}"
        self.seq = 0
        # Every segment write and fsync goes through these: a fault-injecting file layer replaces them in tests.
        self.os_write: Write = os.write
        self.os_fsync: Callable[[int], None] = os.fsync
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._open: dict[str, bytes] = {}  # request id -> its start line, for carry-forward on rotation
        self._pending: deque[tuple[bytes, str | None]] = deque()  # (line, request it finishes) the disk refused
        self._unsynced: list[bytes] = []  # finish/count lines since the last good fsync: re-written if it fails
        self._track_unsynced = fsync_interval > 0
        self._dirty = False
        self._torn = False  # a partial line is at the end of the segment: the next line starts with a newline
        self._fsync_failed = False
        self._needs_rewrite = False  # after a failed fsync, until its records are re-written to a new segment
        self._writes_failing = False
        self._retry_at = 0.0
        self._rotate_at = 0.0
        self._disk = DiskGuard(directory, max_bytes, min_free_bytes, disk_check_interval)
        self._fsync_task: asyncio.Task[None] | None = None
        self.appended = 0
        self.appended_bytes = 0
        self.refused: dict[str, int] = {}
        self.write_failures = 0
        self.fsync_failures = 0
        self.dropped_lines = 0

    @property
    def active_segment(self) -> Path:
        """The segment being written."""
        return self.directory / segment_name(self.owner, self.seq)

    def open(self) -> None:
        """Take this process's lock and open the first segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / f"{self.owner}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd = os.open(self.active_segment, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._size = 0
        self.note_disk_use(outbox_bytes(self.directory), self.appended_bytes)

    # -- what the hot path calls

    def started(self, record: StartRecord) -> None:
        """Record that a request is about to reach an engine; OutboxUnavailable if that cannot be made durable."""
        reason = self._refusal(time.monotonic())
        if reason is None:
            line = record.to_line()
            self._open[record.id] = line  # before the write: a rotation it triggers carries this start forward
            if self._write_line(line, track=False):
                return
            del self._open[record.id]
            reason = "write_failed"
        self.refused[reason] = self.refused.get(reason, 0) + 1
        raise OutboxUnavailable(reason)

    def prompt_counted(self, request_id: str, prompt_tokens: int) -> None:
        """Record the engine's own prompt token count for a running request (never raises)."""
        if request_id in self._open:
            self._emit(COUNTED_PREFIX + orjson.dumps({"id": request_id, "n": prompt_tokens})[1:] + b"\n", None, True)

    def finished(self, event: UsageEvent) -> None:
        """Record the request's usage event (before the client gets its last byte); never raises."""
        # A rejected request bills nothing: past max_pending its record may be dropped; every other one is kept.
        must_keep = event.event_id in self._open or event.status != "rejected"
        self._emit(FINISH_PREFIX + event.to_json() + b"}\n", event.event_id, must_keep)

    # -- state for /readyz and metrics

    @property
    def refusal_reason(self) -> str | None:
        """Why new requests are refused now ("finish_pending", "fsync_failed", "disk_budget", ...), or None."""
        if self._fd < 0:
            return "closed"
        return self._refusal(time.monotonic())

    @property
    def accepting(self) -> bool:
        """Whether a new request's start can be recorded now."""
        return self.refusal_reason is None

    @property
    def writable(self) -> bool:
        """No record waits in memory and the last fsync worked (the flusher adopts dead outboxes only then)."""
        return not self._pending and not self._fsync_failed

    @property
    def pending_lines(self) -> int:
        """Records the disk refused, kept in memory until it takes them."""
        return len(self._pending)

    @property
    def disk_used(self) -> int:
        """Estimated bytes of segment files in the outbox directory."""
        return self._disk.used(self.appended_bytes)

    @property
    def open_requests(self) -> int:
        """Requests started and not finished."""
        return len(self._open)

    def note_disk_use(self, total: int, marker: int) -> None:
        """The flusher's scan: `total` segment bytes, begun when `appended_bytes` was `marker`."""
        self._disk.measured(total, marker)

    # -- writing

    def _refusal(self, now: float) -> str | None:
        if self._pending:
            if now >= self._retry_at:
                self.retry_pending()
            if self._pending:
                return "finish_pending"
        if self._fsync_failed:
            return "fsync_failed"
        return self._disk.reason(now, self.appended_bytes)

    def _emit(self, line: bytes, finishes: str | None, must_keep: bool) -> None:
        if not self._pending and self._write_finishing(line, finishes):
            return
        if must_keep or len(self._pending) < self.max_pending:
            self._pending.append((line, finishes))
            return
        self.dropped_lines += 1
        if self.dropped_lines == 1 or self.dropped_lines % 1000 == 0:
            log.error(
                "outbox: %d record(s) of rejected requests dropped while the disk refuses writes", self.dropped_lines
            )

    def retry_pending(self) -> bool:
        """Write the kept records, in order, as far as the disk takes them; True when none is left."""
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        written = 0
        while self._pending:
            if not self._write_finishing(*self._pending[0]):
                return False
            self._pending.popleft()
            written += 1
        if written:
            log.warning("outbox: %d kept usage record(s) written", written)
        return True

    def _write_finishing(self, line: bytes, finishes: str | None) -> bool:
        # The start stops being carried forward only once its finish is written: a rotation inside this write
        # must not copy it after its finish (a dead owner's recovery would bill it twice), nor drop it before.
        start = self._open.pop(finishes, None) if finishes is not None else None
        if self._write_line(line, track=True):
            return True
        if finishes is not None and start is not None:
            self._open[finishes] = start
        return False

    def _write_line(self, line: bytes, *, track: bool) -> bool:
        data = b"\n" + line if self._torn else line
        try:
            write_whole(self._fd, data, self.os_write)
        except OSError as exc:
            self._torn = self._torn or isinstance(exc, TornWrite)
            self._write_failed(exc)
            return False
        self._torn = False
        if self._writes_failing:
            self._writes_failing = False
            log.warning("outbox writes work again")
        self._size += len(data)
        self.appended_bytes += len(data)
        self._dirty = True
        self.appended += 1
        if track and self._track_unsynced:
            self._unsynced.append(line)
        if self._size >= self.segment_bytes:
            self._rotate()
        return True

    def _write_failed(self, exc: OSError) -> None:
        self.write_failures += 1
        if not self._writes_failing:
            self._writes_failing = True
            log.error(
                "outbox write failed (%s): new requests are refused while usage records cannot be written; "
                "records of requests in flight are kept in memory until the disk takes them",
                exc,
            )

    def _rotate(self) -> None:
        now = time.monotonic()
        if now < self._rotate_at:
            return
        synced = True
        try:
            self.os_fsync(self._fd)  # rare (once per segment); the flusher may delete the old file once delivered
        except OSError as exc:
            self._fsync_error(exc)
            synced = False
        extra = [] if synced else list(self._unsynced)
        if not self._switch_segment(extra):
            self._rotate_at = now + 1.0  # the disk is full: keep appending here, try again later
            return
        self._unsynced = extra
        if not synced:
            self._needs_rewrite = False

    def _switch_segment(self, extra: Sequence[bytes]) -> bool:
        """Continue in a new segment holding the open starts and `extra` lines; False (nothing changed) if the
        disk refused them."""
        path = self.directory / segment_name(self.owner, self.seq + 1)
        lines = [*self._open.values(), *extra]
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND | os.O_TRUNC, 0o600)
        except OSError as exc:
            self._write_failed(exc)
            return False
        try:
            for line in lines:
                write_whole(fd, line, self.os_write)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            self._write_failed(exc)
            return False
        old, self._fd = self._fd, fd
        self.seq += 1
        os.close(old)
        self._size = sum(map(len, lines))
        self.appended_bytes += self._size
        self._torn = False
        self._dirty = True
        return True

    # -- durability

    def start_fsync(self) -> None:
        """Start the background tick: fsync every fsync_interval (in a worker thread, never on the event loop),
        write kept records, recover from a failed fsync."""
        self._fsync_task = asyncio.create_task(self._tick_loop(), name="fleetgate-outbox-fsync")

    async def _tick_loop(self) -> None:
        period = min(self.fsync_interval, RETRY_INTERVAL) if self.fsync_interval > 0 else RETRY_INTERVAL
        next_sync = 0.0
        while True:
            await asyncio.sleep(period)
            try:
                now = time.monotonic()
                due = self.fsync_interval > 0 and now >= next_sync
                if due:
                    next_sync = now + self.fsync_interval
                await self.tick(sync=due)
            except Exception:
                log.exception("outbox tick failed")  # never stop ticking: kept records depend on it

    async def tick(self, sync: bool = True) -> None:
        """One round of upkeep: write kept records, recover from a failed fsync, fsync if asked and dirty."""
        if self._fd < 0:
            return
        if self._pending:
            self.retry_pending()
        if self._needs_rewrite and self._switch_segment(list(self._unsynced)):
            self._needs_rewrite = False  # the records since the last good fsync are in the new segment
        if (sync and self._dirty) or (self._fsync_failed and not self._needs_rewrite):
            await self.sync()

    async def sync(self) -> bool:
        """fsync the active segment in a worker thread; False (new requests refused) if it failed."""
        fd = self._fd
        if fd < 0:
            return True
        count = len(self._unsynced)
        self._dirty = False
        try:
            await asyncio.to_thread(self.os_fsync, fd)
        except OSError as exc:
            if fd != self._fd:
                return True  # rotated meanwhile: the rotation fsynced (or re-wrote) that segment itself
            self._fsync_error(exc)
            return False
        if fd == self._fd:
            del self._unsynced[:count]
            if self._fsync_failed and not self._needs_rewrite:
                self._fsync_failed = False
                log.warning("outbox fsync works again; accepting new requests")
        return True

    def _fsync_error(self, exc: OSError) -> None:
        self.fsync_failures += 1
        self._needs_rewrite = True
        self._dirty = True
        if not self._fsync_failed:
            self._fsync_failed = True
            # Linux may drop the dirty pages of a failed fsync: what it covered is not known to be on disk.
            log.error(
                "outbox fsync failed (%s): usage records written since the last good fsync may not be on disk "
                "(%d kept to re-write%s); re-writing them and the %d open starts to a new segment; new requests "
                "are refused until an fsync succeeds",
                exc,
                len(self._unsynced),
                "" if self._track_unsynced else ", none tracked without a periodic fsync",
                len(self._open),
            )

    def close(self) -> None:
        """Flush to disk and release the lock (a clean stop leaves nothing to adopt but undelivered records)."""
        if self._fsync_task is not None:
            self._fsync_task.cancel()
            self._fsync_task = None
        if self._fd >= 0:
            if self._pending and not self.retry_pending():
                log.error(
                    "outbox: %d usage record(s) could not be written before shutdown (the disk refused them); "
                    "their requests' starts are on disk, so the next gateway bills them as gateway_lost",
                    len(self._pending),
                )
            try:
                self.os_fsync(self._fd)
            except OSError as exc:
                self._fsync_error(exc)
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1
