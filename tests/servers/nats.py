"""A throwaway NATS: `nats-server` with JetStream on a free port, its store in a temp dir."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.servers.process import ServerProcess, find_binary, server_dir, start_on_free_port

PACKAGE = "nats-server"


def answers(port: int) -> bool:
    """True once the server greets a client with INFO saying JetStream is on."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        greeting = b""
        while not greeting.endswith(b"\r\n") and len(greeting) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            greeting += chunk
    if not greeting.startswith(b"INFO "):
        return False
    return bool(json.loads(greeting[5:]).get("jetstream"))


@dataclass
class NatsServer:
    """A running throwaway NATS with JetStream on 127.0.0.1:`port`."""

    root: Path
    port: int
    process: ServerProcess

    @property
    def url(self) -> str:
        """The nats:// URL clients connect to."""
        return f"nats://127.0.0.1:{self.port}"

    @classmethod
    def start(cls) -> NatsServer:
        """Start a server; MissingBinary or ServerFailed if that cannot be done."""
        binary = find_binary("nats-server", PACKAGE)
        root = server_dir("nats")
        try:
            process, port = start_on_free_port(lambda port: _nats(binary, root, port))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root, port, process)

    def stop(self) -> None:
        """Stop by PID (SIGTERM: JetStream shuts down cleanly), then remove its store."""
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _nats(binary: Path, root: Path, port: int) -> ServerProcess:
    return ServerProcess(
        name=f"NATS on 127.0.0.1:{port}",
        argv=[str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(root / "jetstream")],
        log=root / "nats.log",
        probe=lambda: answers(port),
        cwd=root,
    )
