"""Full disks for tests: a real tiny tmpfs where this machine lets us mount one, else a fault-injecting file layer.

`tmpfs` (`mount -t tmpfs -o size=...`, needs root or CAP_SYS_ADMIN) is the real thing: short writes and ENOSPC
come from the kernel, and "full" means a ballast file took the rest of it. The fault layer replaces an Outbox's
`os_write`/`os_fsync` and fails them on demand; it is also the only way to fail an fsync or a truncate, so the
tests of those use it on every machine. Test ids say which one ran.

Run as `python -m tests.metering.faultfs FLAG -- <fleetgate args>` to start a gateway whose outbox writes fail
with ENOSPC while the file FLAG exists (the end-to-end test's fallback when tmpfs cannot be mounted).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from fleetgate.metering.outbox import Outbox


class Disk(Protocol):
    """A disk that a test can fill and free."""

    kind: str
    root: Path

    def fill(self) -> None:
        """Take every free byte (a write may still land in space a file already holds, as on a real disk)."""

    def free(self) -> None:
        """Give the space back."""

    def install(self, box: Outbox) -> None:
        """Put this disk under an outbox (a no-op for a real filesystem)."""


@functools.cache
def tmpfs_mountable() -> bool:
    """Whether `mount -t tmpfs` works here (probed once: mount, then unmount, a scratch directory)."""
    probe = Path(tempfile.mkdtemp(prefix="fg-tmpfs-probe-"))
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True, timeout=10
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], capture_output=True, timeout=10, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


# FLEETGATE_TEST_DISK=fault-layer runs the fallback on a machine that could mount tmpfs (to check it still works).
DISK_KIND = os.environ.get("FLEETGATE_TEST_DISK") or ("tmpfs" if tmpfs_mountable() else "fault-layer")


class Tmpfs:
    """A real tmpfs of `size` bytes mounted at `root`; full = a ballast file holds the rest."""

    kind = "tmpfs"

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(root)],
            capture_output=True,
            timeout=10,
            check=True,
        )
        self._ballast = root / "ballast"

    def fill(self) -> None:
        """Write ballast until the filesystem refuses even one byte."""
        fd = os.open(self._ballast, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            for chunk in (65536, 4096, 512, 64, 1):
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * chunk) > 0:
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        """Remove the ballast."""
        self._ballast.unlink(missing_ok=True)

    def install(self, box: Outbox) -> None:
        """Nothing to install: the kernel does the failing."""

    def close(self) -> None:
        """Unmount (lazily if a test left a file open)."""
        done = subprocess.run(["umount", str(self.root)], capture_output=True, timeout=10)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=10, check=True)


class FaultLayer:
    """Wraps os.write/os.fsync for one outbox: ENOSPC while full, EIO fsyncs, short writes, all on demand."""

    kind = "fault-layer"

    def __init__(self, root: Path, flag: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.flag = flag  # full while this file exists (for a gateway in another process)
        self.full = False
        self.fsync_fails = False
        self.accept_then_full: int | None = None  # the next write takes this many bytes, then the disk is full
        self.writes = 0
        self.fsyncs = 0

    def fill(self) -> None:
        """Refuse every write with ENOSPC."""
        self.full = True
        if self.flag is not None:
            self.flag.touch()

    def free(self) -> None:
        """Accept writes again."""
        self.full = False
        if self.flag is not None:
            self.flag.unlink(missing_ok=True)

    def install(self, box: Outbox) -> None:
        """Route the outbox's writes and fsyncs through this layer."""
        box.os_write = self.write
        box.os_fsync = self.fsync

    def write(self, fd: int, data: bytes) -> int:
        """os.write, or ENOSPC / a short write."""
        self.writes += 1
        if self.full or (self.flag is not None and self.flag.exists()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.accept_then_full is not None:
            n, self.accept_then_full = self.accept_then_full, None
            self.full = True
            return os.write(fd, data[:n])
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        """os.fsync, or EIO."""
        self.fsyncs += 1
        if self.fsync_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    def close(self) -> None:
        """Nothing mounted."""


def main() -> None:
    """Start `fleetgate` with every outbox's writes failing (ENOSPC) while the flag file exists."""
    flag, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: python -m tests.metering.faultfs FLAG -- <fleetgate args>"
    layer = FaultLayer(Path(tempfile.gettempdir()), Path(flag))
    opened = Outbox.open

    def open_with_faults(box: Outbox) -> None:
        layer.install(box)
        opened(box)

    Outbox.open = open_with_faults  # type: ignore[method-assign]
    from fleetgate.cli.main import main as fleetgate

    sys.argv = ["fleetgate", *args]
    fleetgate()


if __name__ == "__main__":
    main()
