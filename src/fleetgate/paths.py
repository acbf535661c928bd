"""Where fleetgate keeps its caches and run state on this machine."""

from __future__ import annotations

import os
from pathlib import Path


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
