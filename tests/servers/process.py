"""One throwaway server process: its binary, a temp dir, a free port, readiness by probe, a stop by PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.fakes import free_port

DIR_PREFIX = "fleetgate-test-"
OWNER_FILE = "owner.pid"
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # nats-server lives in /usr/sbin, off a user's PATH
_PR_SET_PDEATHSIG = 1


class MissingBinary(Exception):
    """A server binary is not installed; the message names the Debian package that provides it."""


class ServerFailed(Exception):
    """A server exited or never became ready; the message carries the tail of its log."""


class ServerExited(ServerFailed):
    """A server exited before it was ready (a bad flag, or its port was taken after we picked it)."""


def missing(what: str, package: str, how: str = "") -> MissingBinary:
    """The error for an absent program, naming what to install (never a reason to skip)."""
    install = how or f"apt-get install -y {package}"
    return MissingBinary(f"{what} is not installed: install the Debian package `{package}` ({install})")


def find_binary(name: str, package: str) -> Path:
    """The installed program `name`, looked up on PATH and in the sbin dirs, else MissingBinary."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        raise missing(f"`{name}`", package)
    return Path(found)


def die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec_fn asking Linux to send `sig` to the child when pytest dies (runs after the uid switch, which
    would otherwise clear it)."""

    def arm() -> None:
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return arm


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_dirs() -> None:
    """Remove the data dirs of earlier sessions whose pytest process is gone (killed before its teardown)."""
    for old in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((old / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(old, ignore_errors=True)


def server_dir(kind: str, user: pwd.struct_passwd | None = None) -> Path:
    """A fresh private dir for one server under the temp dir, marked with this process's PID (and owned by `user`)."""
    sweep_stale_dirs()
    root = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{kind}-"))
    (root / OWNER_FILE).write_text(str(os.getpid()))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


def as_user(user: pwd.struct_passwd | None) -> dict[str, object]:
    """Popen keyword arguments that run the child as `user` (only root may switch), without root's groups."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass
class ServerProcess:
    """A server started from `argv`, logging to `log`, ready once `probe()` is true, stopped by its PID."""

    name: str
    argv: list[str]
    log: Path
    probe: Callable[[], bool]
    stop_signal: int = signal.SIGTERM
    death_signal: int = signal.SIGTERM
    user: pwd.struct_passwd | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait (bounded) until it answers; stop it and raise ServerFailed otherwise."""
        with self.log.open("ab") as out:
            self.proc = self._popen(out)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _popen(self, out: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,  # a Ctrl-C at the terminal reaches pytest, which stops the server in order
            preexec_fn=die_with_parent(self.death_signal),
            **as_user(self.user),
        )

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise ServerExited(f"{self.name} exited with status {code} before it was ready:\n{self.log_tail()}")
            try:
                if self.probe():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ServerFailed(f"{self.name} did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Signal the process by PID, wait (bounded), then kill it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"


def start_on_free_port(make: Callable[[int], ServerProcess], attempts: int = 3) -> tuple[ServerProcess, int]:
    """Start a server on a free port, trying another port if it exits early (someone took the port meanwhile)."""
    for attempt in range(attempts):
        port = free_port()
        server = make(port)
        try:
            server.start()
        except ServerExited:
            if attempt == attempts - 1:
                raise
            continue
        return server, port
    raise AssertionError("unreachable")
