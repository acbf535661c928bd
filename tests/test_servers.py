"""The suite's throwaway servers (tests/servers): a missing binary fails naming its package, a server that cannot
start fails with its log, and nothing outlives the session, not even a pytest killed with SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from tests.servers import MissingBinary, RedisServer, postgres, process
from tests.servers.process import ServerExited, ServerFailed, ServerProcess, start_on_free_port, sweep_stale_dirs
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
# Starts one server of each kind, prints "pid root" per server, then waits to be killed.
CHILD = """
import time
from tests.servers import NatsServer, PostgresServer, RedisServer
for kind in (RedisServer, NatsServer, PostgresServer):
    server = kind.start()
    print(server.process.proc.pid, server.root, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def test_a_missing_binary_names_its_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(process, "SBIN_DIRS", ())
    with pytest.raises(MissingBinary, match=r"install the Debian package `redis-server` \(apt-get install"):
        RedisServer.start()
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    with pytest.raises(MissingBinary, match=r"PostgreSQL server .* install the Debian package `postgresql`"):
        postgres.bin_dir()


def test_a_server_that_exits_fails_with_its_log(tmp_path: Path) -> None:
    server = ServerProcess(
        "doomed", ["sh", "-c", "echo 'bad flag --nope' >&2; exit 3"], tmp_path / "log", lambda: False
    )
    with pytest.raises(ServerExited, match=r"(?s)doomed exited with status 3 .*bad flag --nope"):
        server.start()


def test_a_server_that_never_answers_is_stopped_and_fails(tmp_path: Path) -> None:
    server = ServerProcess("mute", ["sleep", "600"], tmp_path / "log", lambda: False)
    with pytest.raises(ServerFailed, match="mute did not answer within"):
        server.start(timeout=0.5)
    assert server.proc is not None and server.proc.returncode == -signal.SIGTERM


def test_a_server_whose_port_was_taken_is_retried_on_another(tmp_path: Path) -> None:
    ports: list[int] = []

    def make(port: int) -> ServerProcess:
        ports.append(port)
        argv = ["sh", "-c", "exit 1"] if len(ports) == 1 else ["sleep", "600"]
        return ServerProcess(f"try {len(ports)}", argv, tmp_path / "log", lambda: len(ports) > 1)

    server, port = start_on_free_port(make)
    try:
        assert len(ports) == 2 and port == ports[1]
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode is not None


def test_stop_ends_the_process_and_removes_its_files() -> None:
    server = RedisServer.start()
    assert server.root.is_dir() and server.process.proc is not None
    pid = server.process.proc.pid
    server.stop()
    assert not _running(pid) and not server.root.exists()


async def test_servers_die_with_a_killed_pytest_and_their_dirs_are_swept() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    started: list[tuple[int, Path]] = []
    try:
        for _ in range(3):
            line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
            assert line, (await child.stderr.read()).decode() if child.stderr else "the child printed nothing"
            pid, root = line.decode().split()
            started.append((int(pid), Path(root)))
        assert all(_running(pid) and root.is_dir() for pid, root in started)
    finally:
        child.kill()  # no teardown runs: only the kernel's parent-death signal can stop the servers
        await child.wait()
    await wait_until(lambda: not any(_running(pid) for pid, _ in started), timeout=60, what="the servers to exit")
    sweep_stale_dirs()  # what the next session does before it makes its own dirs
    assert not any(root.exists() for _, root in started)
