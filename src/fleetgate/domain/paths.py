"""Where fleetgate keeps its caches and run state on this machine, and how its private files are created.

State (databases, the key file, the run dir, logs) may hold keys, prompts and usage: it is created readable by
this user only (directories 0700, files 0600), whatever the umask.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The user's cache dir for fleetgate (engine builds, models); `FLEETGATE_CACHE_DIR` overrides."""
    override = os.environ.get("FLEETGATE_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetgate"


def default_state_dir() -> Path:
    """Where fleetgate keeps its state (the default SQLite database, the run dir); `FLEETGATE_STATE_DIR` overrides."""
    override = os.environ.get("FLEETGATE_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetgate"


def default_run_dir() -> Path:
    """Where `up` keeps PIDs and state so `down` and `status` can find them; `FLEETGATE_RUN_DIR` overrides."""
    override = os.environ.get("FLEETGATE_RUN_DIR")
    if override:
        return Path(override)
    return default_state_dir() / "run"


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def tighten(path: Path, mode: int) -> None:
    """Narrow an existing file or folder this user owns to `mode` if others may read it (from an older install)."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, mode)
    except FileNotFoundError:
        return
    except OSError as exc:  # a read-only filesystem, say: serving still works, the operator is told
        log.warning("could not narrow %s to %o: %s", path, mode, exc.strerror)


def private_dir(path: Path, *, tighten_existing: bool = False) -> Path:
    """Create a folder (and missing parents) only this user may enter; optionally narrow an existing one."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if tighten_existing:
        tighten(path, PRIVATE_DIR_MODE)
    return path


def ensure_state_dir() -> Path:
    """The state dir, created (or narrowed) to 0700."""
    return private_dir(default_state_dir(), tighten_existing=True)


def private_file(path: Path) -> None:
    """Create an empty file only this user may read, or narrow an existing one we own (never truncates)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))
    except FileExistsError:
        tighten(path, PRIVATE_FILE_MODE)


def open_private_log(path: Path) -> int:
    """A file descriptor appending to a log only this user may read (created 0600; an existing one is narrowed)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, PRIVATE_FILE_MODE)
    tighten(path, PRIVATE_FILE_MODE)
    return fd
