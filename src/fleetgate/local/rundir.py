"""The run directory: what `up` started (PIDs, ports, URLs), so `down` and `status` work from another shell."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone (guards against PID reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


@dataclass
class ProcRecord:
    """A process we started, identified by PID and start time so a recycled PID is never signalled."""

    pid: int
    start_time: int | None
    role: str
    port: int | None = None
    url: str | None = None
    id: str | None = None

    @classmethod
    def of(cls, pid: int, role: str, **extra: Any) -> ProcRecord:
        """Record a live process."""
        return cls(pid=pid, start_time=proc_start_time(pid), role=role, **extra)

    def alive(self) -> bool:
        """True if this exact process still runs (same PID and start time, not a zombie)."""
        if self.start_time is None or proc_start_time(self.pid) != self.start_time:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return state[state.rindex(")") + 2 :].split()[0] != "Z"

    def signal(self, sig: int) -> bool:
        """Send a signal to this process (by PID, never by name); False if it was already gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


@dataclass
class RunState:
    """Everything `up` started and where it listens."""

    status: str = "starting"
    gateway_url: str | None = None
    supervisor: ProcRecord | None = None
    replicas: list[ProcRecord] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    binary: str | None = None
    model: str | None = None
    model_alias: str | None = None
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the state file and `status --json`."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        """Rebuild from the state file."""
        sup = data.get("supervisor")
        return cls(
            status=data.get("status", "unknown"),
            gateway_url=data.get("gateway_url"),
            supervisor=ProcRecord(**sup) if sup else None,
            replicas=[ProcRecord(**r) for r in data.get("replicas", [])],
            engines=list(data.get("engines", [])),
            binary=data.get("binary"),
            model=data.get("model"),
            model_alias=data.get("model_alias"),
            updated_at=float(data.get("updated_at", 0.0)),
        )


class RunDir:
    """Reads and atomically writes the state file in one folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        """Where the state lives."""
        return self.path / STATE_FILE

    def log_file(self, name: str) -> Path:
        """Where a started process writes its output."""
        return self.path / "logs" / f"{name}.log"

    def write(self, state: RunState) -> None:
        """Replace the state file atomically (a reader never sees half a file)."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "logs").mkdir(exist_ok=True)
        state.updated_at = time.time()
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2))
        tmp.replace(self.state_file)

    def read(self) -> RunState | None:
        """The current state, or None if nothing was started here."""
        try:
            return RunState.from_json(json.loads(self.state_file.read_text()))
        except (OSError, ValueError):
            return None

    def clear(self) -> None:
        """Forget the state (after everything stopped)."""
        self.state_file.unlink(missing_ok=True)


def stop_recorded(state: RunState, timeout: float = 20.0) -> list[int]:
    """Stop every recorded process: SIGTERM the supervisor, then anything left, then SIGKILL. Returns killed PIDs."""
    signalled: list[int] = []
    if state.supervisor is not None and state.supervisor.signal(signal.SIGTERM):
        signalled.append(state.supervisor.pid)
        _wait_gone([state.supervisor], timeout)
    left = [r for r in state.replicas if r.alive()]
    for record in left:
        if record.signal(signal.SIGTERM):
            signalled.append(record.pid)
    _wait_gone(left, 5.0)
    for record in [*([state.supervisor] if state.supervisor else []), *state.replicas]:
        if record.signal(signal.SIGKILL):
            signalled.append(record.pid)
    _wait_gone([*([state.supervisor] if state.supervisor else []), *state.replicas], 5.0)
    return sorted(set(signalled))


def _wait_gone(records: list[ProcRecord], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(r.alive() for r in records):
        time.sleep(0.1)
