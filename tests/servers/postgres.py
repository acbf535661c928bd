"""A throwaway PostgreSQL cluster: `initdb` into a temp dir, `postgres` on a free port, trust auth, no fsync."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers.process import ServerFailed, ServerProcess, as_user, missing, server_dir, start_on_free_port

PACKAGE = "postgresql"
SUPERUSER = "postgres"
# Durability is worth nothing in a cluster that is deleted at the end of the session; speed is.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "200"}


def _version(bin_dir: str) -> tuple[int, ...]:
    name = Path(bin_dir).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def bin_dir() -> Path:
    """The dir holding `initdb` and `postgres`: Debian's newest /usr/lib/postgresql/*/bin, else PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if os.access(Path(candidate, "initdb"), os.X_OK) and os.access(Path(candidate, "postgres"), os.X_OK):
            return Path(candidate)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).parent == Path(postgres).parent:
        return Path(initdb).parent
    raise missing("the PostgreSQL server (initdb, postgres in /usr/lib/postgresql/*/bin or on PATH)", PACKAGE)


def os_user() -> pwd.struct_passwd | None:
    """Whom to run the cluster as: `postgres` when we are root (initdb refuses root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise missing("the `postgres` OS user (initdb refuses to run as root)", PACKAGE) from None


def answers(port: int) -> bool:
    """True once the server completes a trust-auth startup handshake (not while it is still starting up)."""
    params = b"user\0" + SUPERUSER.encode() + b"\0database\0postgres\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(startup)
        reply = sock.recv(1)
        if reply == b"R":  # AuthenticationOk (an 'E' says "the database system is starting up")
            sock.sendall(b"X\0\0\0\x04")
            return True
    return False


@dataclass
class PostgresServer:
    """A running throwaway cluster; superuser `postgres`, trust auth, on 127.0.0.1:`port`."""

    root: Path
    port: int
    process: ServerProcess

    @property
    def admin_url(self) -> str:
        """A URL of the maintenance database, for CREATE/DROP DATABASE."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        """A URL of one database in this cluster."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb and start a cluster; MissingBinary or ServerFailed if that cannot be done."""
        bins, user = bin_dir(), os_user()
        root = server_dir("postgres", user)
        try:
            _initdb(bins, root, user)
            process, port = start_on_free_port(lambda port: _postgres(bins, root, user, port))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root, port, process)

    def stop(self) -> None:
        """Fast shutdown by PID (SIGINT: clients are disconnected), then remove the cluster's files."""
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _initdb(bins: Path, root: Path, user: pwd.struct_passwd | None) -> None:
    argv = [str(bins / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]
    argv += ["--locale=C", "--no-sync", "--no-instructions"]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=120, check=False, **as_user(user))  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ServerFailed(f"initdb failed with status {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")


def _postgres(bins: Path, root: Path, user: pwd.struct_passwd | None, port: int) -> ServerProcess:
    (root / "socket").mkdir(exist_ok=True)
    if user is not None:
        os.chown(root / "socket", user.pw_uid, user.pw_gid)
    argv = [str(bins / "postgres"), "-D", str(root / "data"), "-p", str(port), "-h", "127.0.0.1"]
    argv += ["-k", str(root / "socket")]  # never /var/run/postgresql, which the machine's own server uses
    for name, value in SETTINGS.items():
        argv += ["-c", f"{name}={value}"]
    return ServerProcess(
        name=f"PostgreSQL on 127.0.0.1:{port}",
        argv=argv,
        log=root / "postgres.log",
        probe=lambda: answers(port),
        stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM would wait for every client to leave
        death_signal=signal.SIGQUIT,  # immediate shutdown if pytest is killed: nothing here is worth keeping
        user=user,
        cwd=root,
    )
