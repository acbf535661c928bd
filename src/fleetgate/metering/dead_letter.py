"""Dead letters: usage records the flusher set aside, one JSON-lines file per consumer.

Two kinds. A poison record (a finish record that is not a valid UsageEvent, or one the ledger refuses with a data
error) is quarantined so the records behind it still reach the ledger. A sink's backlog past
`metering.sink_max_backlog_bytes` (a sink down for days) is moved here, oldest first, so its segments can be
freed while the ledger is current; the ledger itself is never dead-lettered for being behind.

Files: `<outbox dir>/dead-letter/<consumer>.jsonl`, mode 0600, one line per record:
`{"at": unix time, "consumer", "reason", "segment", "record": <the event as it was in the outbox>}` (replay a
sink's with `jq -c .record`). Records carry no prompts (the outbox never holds any). The folder is bounded
(`metering.dead_letter_max_bytes`): past it, records are dropped, counted and logged.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from fleetgate.metering.disk import write_whole

log = logging.getLogger(__name__)

DEAD_LETTER_DIR = "dead-letter"


class DeadLetters:
    """Appends set-aside records to per-consumer files under a size bound; counts what was written and dropped."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.written: dict[str, int] = {}  # records dead-lettered per consumer
        self.dropped: dict[str, int] = {}  # records lost because the folder was at its bound
        self._size: int | None = None  # bytes in the folder, measured on first use
        self._full = False

    def path(self, consumer: str) -> Path:
        """The file of one consumer."""
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', consumer)}.jsonl"

    def add(self, consumer: str, reason: str, segment: str, records: Sequence[Any]) -> int:
        """Append records durably (blocking: run it in a worker thread); returns how many were kept, the rest
        being dropped at the bound. Raises OSError when the disk refuses them (nothing partial stays)."""
        if not records:
            return 0
        now = time.time()
        lines = [
            orjson.dumps({"at": now, "consumer": consumer, "reason": reason, "segment": segment, "record": r}) + b"\n"
            for r in records
        ]
        size = self._measure()
        room = self.max_bytes - size
        keep = 0
        while keep < len(lines) and len(lines[keep]) <= room:
            room -= len(lines[keep])
            keep += 1
        if keep:
            data = b"".join(lines[:keep])
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path(consumer), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            try:
                write_whole(fd, data)
                os.fsync(fd)  # the segment these came from may be deleted next
            finally:
                os.close(fd)
            self._size = size + len(data)
            self.written[consumer] = self.written.get(consumer, 0) + keep
        self._note_dropped(consumer, len(lines) - keep)
        return keep

    def _note_dropped(self, consumer: str, dropped: int) -> None:
        if not dropped:
            self._full = False
            return
        self.dropped[consumer] = self.dropped.get(consumer, 0) + dropped
        self._size = None  # measure again next time: an operator may have emptied the folder
        if not self._full:
            self._full = True
            log.error(
                "the dead-letter folder %s is at its bound (%d bytes, metering.dead_letter_max_bytes): %d %s "
                "record(s) dropped, and more will be until an operator empties it",
                self.directory,
                self.max_bytes,
                dropped,
                consumer,
            )

    def _measure(self) -> int:
        if self._size is None:
            try:
                self._size = sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
            except FileNotFoundError:
                self._size = 0
        return self._size
