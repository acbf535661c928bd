"""Child processes for benchmarks: start with a log, wait for a port or a URL, stop by PID."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO


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


class Children:
    """The processes a benchmark started; leaving the `with` block stops them newest first, by PID."""

    def __init__(self) -> None:
        self.items: list[Child] = []

    def add(self, child: Child) -> Child:
        """Keep `child` to stop it later; returns it."""
        self.items.append(child)
        return child

    def stop_all(self, grace: float = 15.0) -> None:
        """Stop every child, newest first."""
        while self.items:
            self.items.pop().stop(grace)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_all()


def start(
    name: str,
    args: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: int = subprocess.DEVNULL,
    stdout: int | None = None,
) -> Child:
    """Start `args` with stderr (and stdout, unless `stdout` says otherwise) going to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log if stdout is not None else subprocess.STDOUT,
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


def wait_ready(child: Child, url: str, timeout: float, poll: float = 0.1) -> float:
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
        time.sleep(poll)


def wait_port_file(child: Child, port_file: Path, timeout: float = 30) -> int:
    """The port a child writes to `port_file` once it listens; StartError if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if not child.alive() or time.monotonic() > deadline:
            raise StartError(f"{child.name} did not start; log:\n{child.log_tail()}")
        time.sleep(0.02)
    return int(port_file.read_text())


def start_ready(
    name: str,
    args: list[str],
    log_path: Path,
    url: str,
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start a child and wait until `url` answers 200; a child that does not come up is stopped, then raised."""
    child = start(name, args, log_path, env=env, cwd=cwd)
    try:
        wait_ready(child, url, timeout)
    except BaseException:
        child.stop()
        raise
    return child


def start_with_port_file(name: str, args: list[str], log_path: Path, port_file: Path) -> tuple[Child, int]:
    """Start a child that is told (in `args`) to write its port to `port_file`; wait for it and return it."""
    port_file.unlink(missing_ok=True)  # a stale file would name a port nobody listens on
    child = start(name, args, log_path)
    try:
        return child, wait_port_file(child, port_file)
    except BaseException:
        child.stop()
        raise
