"""How a local replica is started: the command line and environment per engine kind."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetgate.config import LocalFleetConfig
from fleetgate.domain.engine_kind import EngineKind


@dataclass(frozen=True)
class LaunchSpec:
    """One process to start: argv and the environment variables to add."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class ReplicaLauncher(Protocol):
    """What the supervisor needs to know to start one kind of local replica."""

    kind: EngineKind
    id_prefix: str
    count: int
    start_timeout: float
    model_alias: str

    def spec(self, port: int, index: int) -> LaunchSpec:
        """The process for replica `index` listening on `port`."""
        ...


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def llama_server_args(binary: Path, model: Path, port: int, cfg: LocalFleetConfig) -> list[str]:
    """Arguments for one replica; `--no-repack` avoids the AMX repack crash measured on this CPU kind."""
    args = [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-t",
        str(cfg.threads),
        "--parallel",
        str(cfg.parallel),
        "-c",
        str(cfg.ctx_size),
        "--metrics",
        "--alias",
        cfg.model_alias,
        "--slot-prompt-similarity",
        f"{cfg.slot_prompt_similarity:g}",
        "--cache-ram",
        str(cfg.cache_ram_mib),
    ]
    if _has_amx():
        args.append("--no-repack")
    args.extend(cfg.extra_args)
    return args


class LlamaCppLauncher:
    """Local llama-server replicas of a GGUF model."""

    kind: EngineKind = "llamacpp"
    id_prefix = "local"

    def __init__(self, cfg: LocalFleetConfig, binary: Path, model: Path) -> None:
        self.cfg = cfg
        self.binary = binary
        self.model = model
        self.count = cfg.replicas
        self.start_timeout = cfg.start_timeout
        self.model_alias = cfg.model_alias

    def spec(self, port: int, index: int) -> LaunchSpec:
        """llama-server with the configured slots and context."""
        return LaunchSpec(llama_server_args(self.binary, self.model, port, self.cfg))
