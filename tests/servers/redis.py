"""A throwaway Redis: `redis-server` on a free port that keeps nothing on disk."""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.servers.process import ServerProcess, find_binary, server_dir, start_on_free_port

PACKAGE = "redis-server"


def answers(port: int) -> bool:
    """True once the server answers PING with PONG (not -LOADING)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


@dataclass
class RedisServer:
    """A running throwaway Redis on 127.0.0.1:`port`."""

    root: Path
    port: int
    process: ServerProcess

    def url(self, db: int = 0) -> str:
        """The redis:// URL of one logical database."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    @classmethod
    def start(cls) -> RedisServer:
        """Start a server; MissingBinary or ServerFailed if that cannot be done."""
        binary = find_binary("redis-server", PACKAGE)
        root = server_dir("redis")
        try:
            process, port = start_on_free_port(lambda port: _redis(binary, root, port))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root, port, process)

    def stop(self) -> None:
        """Stop by PID, then remove its dir."""
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _redis(binary: Path, root: Path, port: int) -> ServerProcess:
    argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(root), "--daemonize", "no", "--protected-mode", "no", "--unixsocket", ""]
    return ServerProcess(
        name=f"Redis on 127.0.0.1:{port}",
        argv=argv,
        log=root / "redis.log",
        probe=lambda: answers(port),
        cwd=root,
    )
