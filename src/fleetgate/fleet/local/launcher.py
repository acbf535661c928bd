"""The llama-server command line for one local replica."""

from __future__ import annotations

import socket
from pathlib import Path

from fleetgate.config import LocalFleetConfig


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
    ]
    if _has_amx():
        args.append("--no-repack")
    args.extend(cfg.extra_args)
    return args
