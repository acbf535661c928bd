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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fleetgate.metering.events import UsageEvent

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".log"
# How each kind of line starts: the flusher tells them apart by these bytes without parsing the line.
START_PREFIX = b'{"t":"s",'
COUNTED_PREFIX = b'{"t":"p",'
FINISH_PREFIX = b'{"t":"f","e":'
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True, slots=True)
class StartRecord:
    """What is known when a request is handed to an engine: enough to bill it if the gateway dies."""

    id: str
    tenant_id: str
    key_id: str
    model: str
    adapter: str | None
    replica_id: str | None
    engine: str | None
    gpu_type: str | None
    started_at: float
    stream: bool
    endpoint: str
    est_prompt_tokens: int

    def to_line(self) -> bytes:
        """One outbox line."""
        return START_PREFIX + orjson.dumps(self)[1:] + b"\n"  # no asdict(): it deep-copies every field

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartRecord:
        """Rebuild from a parsed line."""
        return cls(**{k: data.get(k) for k in cls.__slots__})  # type: ignore[arg-type]


def segment_name(owner: str, seq: int) -> str:
    """File name of one segment."""
    return f"{owner}-{seq:06d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    """(owner, seq) of a segment file name, or None."""
    if not name.endswith(SEGMENT_SUFFIX):
        return None
    stem = name[: -len(SEGMENT_SUFFIX)]
    owner, _, seq = stem.rpartition("-")
    if not owner or not seq.isdigit():
        return None
    return owner, int(seq)


def parse_lines(
    data: bytes, base: int = 0, skip: tuple[bytes, ...] = ()
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """Parse complete lines into (end offset, record); returns them and the bytes used (a torn tail is left).

    Lines starting with one of `skip` are not parsed: delivery needs finish lines only, and parsing the start
    line every request also writes was about a quarter of the flusher's CPU."""
    records: list[tuple[int, dict[str, Any]]] = []
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        pos = nl + 1
        if not line or line.startswith(skip):
            continue
        try:
            records.append((base + pos, orjson.loads(line)))
        except orjson.JSONDecodeError:
            log.warning("skipping a corrupt outbox line (%d bytes)", len(line))
    return records, pos


def finished_events(data: bytes, base: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(end offset, UsageEvent dict) of each complete finish line; start and prompt-count lines are not parsed."""
    records, _ = parse_lines(data, base, skip=(START_PREFIX, COUNTED_PREFIX))
    return [(at, r["e"]) for at, r in records if r.get("t") == "f"]


class Outbox:
    """Appends records for this process; one instance per gateway process."""

    def __init__(self, directory: Path, segment_bytes: int = 16 << 20, fsync_interval: float = 0.1) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        # Unique per instance: a PID alone is reused, and tests run several gateways in one process.
        self.owner = f"{os.getpid()}x{time.time_ns() // 1_000_000}x{secrets.token_hex(3)}"
        self.seq = 0
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._open: dict[str, bytes] = {}  # request id -> its start line, for carry-forward on rotation
        self._dirty = False
        self._fsync_task: asyncio.Task[None] | None = None
        self.appended = 0

    @property
    def active_segment(self) -> Path:
        """The segment being written."""
        return self.directory / segment_name(self.owner, self.seq)

    def open(self) -> None:
        """Take this process's lock and open the first segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / f"{self.owner}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._open_segment()

    def _open_segment(self) -> None:
        self._fd = os.open(self.active_segment, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._size = 0

    def start_fsync(self) -> None:
        """Bound what a machine crash can lose: fsync in a worker thread, never on the event loop."""
        if self.fsync_interval > 0:
            self._fsync_task = asyncio.create_task(self._fsync_loop(), name="fleetgate-outbox-fsync")

    async def _fsync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            if self._dirty and self._fd >= 0:
                self._dirty = False
                fd = self._fd
                with contextlib.suppress(OSError):  # the segment may have rotated and closed meanwhile
                    await asyncio.to_thread(os.fsync, fd)

    def _append(self, line: bytes) -> None:
        os.write(self._fd, line)
        self._size += len(line)
        self._dirty = True
        self.appended += 1
        if self._size >= self.segment_bytes:
            self._rotate()

    def _rotate(self) -> None:
        old = self._fd
        self.seq += 1
        self._open_segment()
        os.fsync(old)  # rare (once per segment); the flusher may delete the old file once it is delivered
        os.close(old)
        for line in self._open.values():
            os.write(self._fd, line)
            self._size += len(line)

    def started(self, record: StartRecord) -> None:
        """Record that a request is about to reach an engine."""
        line = record.to_line()
        self._open[record.id] = line
        self._append(line)

    def prompt_counted(self, request_id: str, prompt_tokens: int) -> None:
        """Record the engine's own prompt token count for a running request."""
        if request_id in self._open:
            self._append(COUNTED_PREFIX + orjson.dumps({"id": request_id, "n": prompt_tokens})[1:] + b"\n")

    def finished(self, event: UsageEvent) -> None:
        """Record the request's usage event (before the client gets its last byte)."""
        self._open.pop(event.event_id, None)
        self._append(FINISH_PREFIX + event.to_json() + b"}\n")

    def close(self) -> None:
        """Flush to disk and release the lock (a clean stop leaves nothing to adopt but undelivered records)."""
        if self._fsync_task is not None:
            self._fsync_task.cancel()
            self._fsync_task = None
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = -1

    @property
    def open_requests(self) -> int:
        """Requests started and not finished."""
        return len(self._open)
