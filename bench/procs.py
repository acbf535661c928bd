"""Child processes for benchmarks: start, wait for readiness, read CPU time from /proc, stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A child process did not come up; the message says why and where its log is."""


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A process we started; `stop()` ends it (and only it) by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The end of the child's output, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; always reaps the process."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def start(
    name: str, args: list[str], log_path: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Child:
    """Start `args` with stdout and stderr going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            # Own session: a Ctrl-C in the terminal reaches only the benchmark, which then stops children in order.
            start_new_session=True,
        )
    except OSError:
        log.close()
        raise
    return Child(name, proc, log_path, log)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET to a 127.0.0.1 URL, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_ready(child: Child, url: str, timeout: float) -> float:
    """Poll `url` until it answers 200; return seconds waited, or raise StartError if the child dies or times out."""
    began = time.monotonic()
    while True:
        if not child.alive():
            raise StartError(
                f"{child.name} exited with code {child.proc.returncode} while starting; "
                f"log {child.log_path}:\n{child.log_tail()}"
            )
        if http_status(url) == 200:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise StartError(
                f"{child.name} did not answer {url} with 200 within {timeout:.0f}s; "
                f"log {child.log_path}:\n{child.log_tail()}"
            )
        time.sleep(0.1)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree (root and live descendants): `role` user+system, and
    `role.sys` system only."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    # One pass over /proc for all trees: cheap enough to run right before and after each measured cell.
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                stats[int(entry.name)] = fields
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: dict[str, float] = {}
    for role, root in roots.items():
        user = system = 0
        seen: set[int] = set()
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            # Fields 14 and 15 of proc_pid_stat(5), utime and stime; index 0 here is field 3.
            user += int(stats[pid][11])
            system += int(stats[pid][12])
            todo.extend(children.get(pid, []))
        out[role] = (user + system) / CLK_TCK
        out[f"{role}.sys"] = system / CLK_TCK
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (everything but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK
