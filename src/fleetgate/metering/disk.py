"""Disk facts for the outbox: whole-line writes that never leave half a record, and the disk budget.

Why a line is written whole or not at all: a write to a full filesystem may be short (tmpfs and ext4 write what
fits, then fail with ENOSPC). Half a record followed by the next record would glue two lines into one corrupt
line, losing the good one too. So a short write is completed, and if the rest is refused, the file is truncated
back to where the line began.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

Write = Callable[[int, bytes], int]


class TornWrite(OSError):
    """A write failed after part of the line reached the file and truncating it back failed too."""


def write_whole(fd: int, data: bytes, write: Write = os.write) -> None:
    """Write all of `data` to an O_APPEND descriptor or none of it; raise OSError when the file refused it.

    TornWrite (an OSError) says a partial line stayed in the file: the caller must start its next line with a
    newline so the fragment stays a line of its own, which readers skip as corrupt."""
    done = 0
    try:
        while done < len(data):
            n = write(fd, data[done:] if done else data)
            if n <= 0:
                raise OSError(errno.ENOSPC, "write took no bytes")
            done += n
    except OSError as exc:
        if done:
            try:
                os.ftruncate(fd, os.fstat(fd).st_size - done)
            except OSError as trunc:
                raise TornWrite(
                    exc.errno, f"{exc.strerror or exc}; truncating the partial line failed: {trunc}"
                ) from exc
        raise


def outbox_bytes(directory: Path) -> int:
    """Bytes held by the outbox's segment files (all processes sharing the directory)."""
    total = 0
    for path in directory.glob("*.log"):
        with contextlib.suppress(FileNotFoundError):  # delivered and deleted meanwhile
            total += path.stat().st_size
    return total


class DiskGuard:
    """Whether disk space allows new starts: the outbox's own budget and the filesystem's free-space floor.

    The budget is measured by the flusher each pass (a directory scan, off the request path) plus what this
    process appended since; the floor is one statvfs at most every `interval` seconds, never per request."""

    def __init__(self, directory: Path, max_bytes: int | None, min_free_bytes: int, interval: float = 0.1) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.interval = interval
        self._measured = 0  # segment bytes in the directory at the last scan
        self._marker = 0  # this process's appended bytes when that scan began
        self._next_check = 0.0
        self._reason: str | None = None
        self.free_bytes: int | None = None  # at the last check, for operators

    def measured(self, total: int, marker: int) -> None:
        """Record a scan of the directory that began when this process had appended `marker` bytes."""
        self._measured, self._marker = total, marker

    def used(self, appended: int) -> int:
        """Estimated bytes the outbox holds now."""
        return self._measured + max(appended - self._marker, 0)

    def reason(self, now: float, appended: int) -> str | None:
        """Why disk space refuses new starts ("disk_budget", "disk_free"), or None; re-checked every interval."""
        if now >= self._next_check:
            self._next_check = now + self.interval
            reason = self._check(appended)
            if reason != self._reason:
                if reason is not None:
                    log.error(
                        "outbox %s: refusing new requests (outbox holds ~%d bytes of %s allowed; %s bytes free, "
                        "floor %d)",
                        reason,
                        self.used(appended),
                        self.max_bytes,
                        self.free_bytes,
                        self.min_free_bytes,
                    )
                else:
                    log.warning("outbox disk space is back within limits (%s); accepting new requests", self._reason)
                self._reason = reason
        return self._reason

    def _check(self, appended: int) -> str | None:
        if self.max_bytes is not None and self.used(appended) > self.max_bytes:
            return "disk_budget"
        if self.min_free_bytes <= 0:
            return None
        try:
            st = os.statvfs(self.directory)
        except OSError as exc:
            log.warning("cannot stat the outbox filesystem: %s", exc)
            return self._reason  # unknown: keep the last answer
        self.free_bytes = st.f_bavail * st.f_frsize
        return "disk_free" if self.free_bytes < self.min_free_bytes else None
