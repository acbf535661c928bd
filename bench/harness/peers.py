"""Peer routers from PyPI (sglang-router, vllm-router) in front of the same replicas, each in a venv of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.procs import Child, free_port, start_ready

BENCH_CACHE = Path.home() / ".cache" / "fleetgate" / "bench"
# Pinned so the comparison means the same thing on every run; bump after checking `pip index versions <dist>`.
PEERS: dict[str, dict[str, str]] = {
    "sglang-router": {"version": "0.3.2", "venv": "sglang-router-venv"},
    "vllm-router": {"version": "0.1.17", "venv": "vllm-router-venv"},
}


def _installed(python: Path, name: str) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version('{name}'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_peer(name: str, say: Callable[[str], None]) -> tuple[Path, str]:
    """The peer's venv python (installing the pinned version on first use) and its version; RuntimeError if not."""
    info = PEERS[name]
    venv = BENCH_CACHE / info["venv"]
    python = venv / "bin" / "python"
    want = info["version"]
    have = _installed(python, name)
    if have == want:
        return python, have
    say(f"{name}: installing {name}=={want} into {venv} (first use)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{name}=={want}"], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.strip() and not x.startswith("WARNING: Location")]
        raise RuntimeError(f"pip install {name}=={want} failed: {(lines or ['?'])[-1][:200]}")
    have = _installed(python, name)
    if have is None:
        raise RuntimeError(f"{name} does not import after installing it")
    return python, have


def start_peer(
    workdir: Path, python: Path, router: str, policy: str, urls: Sequence[str], tag: str, label: str
) -> tuple[Child, int]:
    """sglang-router or vllm-router with its documented CLI in front of the replicas; wait for /health."""
    port, metrics_port = free_port(), free_port()
    common = ["--worker-urls", *urls, "--policy", policy, "--host", "127.0.0.1", "--port", str(port)]
    # Its Prometheus exporter would bind 0.0.0.0 on a fixed default port: keep it local and free.
    common += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port)]
    if router == "sglang-router":
        args = [str(python), "-m", "sglang_router.launch_router", *common, "--log-level", "warn"]
    else:
        args = [str(python.parent / "vllm-router"), *common, "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    url = f"http://127.0.0.1:{port}/health"
    return start_ready(label, args, workdir / f"{tag}-router.log", url, 90, env=env, cwd=workdir), port
