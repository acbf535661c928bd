"""End-to-end fixtures: real `fleetgate up` stacks on free 127.0.0.1 ports, always stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetgate.local.build import cached_build
from fleetgate.local.rundir import proc_start_time
from tests.fakes import free_port
from tests.keys import DEMO_KEY as DEMO_KEY  # e2e modules import it from here
from tests.keys import KEY_ENV

FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]


@dataclass
class Stack:
    """A running `fleetgate up --detach`."""

    url: str
    run_dir: Path
    env: dict[str, str]
    info: dict[str, Any]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a fleetgate command against this stack."""
        return subprocess.run([*FLEETGATE, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def state(self) -> dict[str, Any]:
        """The run directory's state file."""
        return dict(json.loads((self.run_dir / "state.json").read_text()))

    def pids(self) -> list[int]:
        """Every PID the stack recorded."""
        state = self.state()
        return [state["supervisor"]["pid"], *(r["pid"] for r in state["replicas"])]


def require_vllm() -> None:
    """The vLLM tier needs the vLLM environment; `make test` installs it first (`fleetgate engine install vllm`)."""
    from fleetgate.local.vllm_env import cached_env

    if cached_env() is None:
        pytest.fail("the vLLM environment is not installed: run `fleetgate engine install vllm` first")


def require_engine() -> None:
    """The e2e suite needs the built llama-server; `make test` builds it first (`make engine`)."""
    if cached_build() is None:
        pytest.fail("llama-server is not built: run `make engine` (or `fleetgate engine build`) first")


def start_stack(tmp: Path, *args: str, env_extra: dict[str, str] | None = None, timeout: float = 300) -> Stack:
    """Start a detached stack with its own run dir; fail with its log if it does not come up."""
    run_dir = tmp / "run"
    env = {**os.environ, "FLEETGATE_RUN_DIR": str(run_dir), **KEY_ENV, **(env_extra or {})}
    port = free_port()
    proc = subprocess.run(
        [*FLEETGATE, "up", "--detach", "--json", "--port", str(port), "--no-self-test", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        log = run_dir / "logs" / "up.log"
        pytest.fail(f"fleetgate up failed: {proc.stderr}\n{log.read_text() if log.exists() else ''}")
    info = json.loads(proc.stdout)
    return Stack(url=info["gateway_url"], run_dir=run_dir, env=env, info=info)


def stop_stack(stack: Stack) -> None:
    """`fleetgate down`, then prove that no recorded process survived."""
    try:
        pids = stack.pids()
    except (OSError, ValueError):
        pids = []
    result = stack.cli("down", "--json")
    assert result.returncode == 0, result.stderr
    leftover = [pid for pid in pids if proc_start_time(pid) is not None and _not_zombie(pid)]
    assert leftover == [], f"processes left after down: {leftover}"


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


@pytest.fixture(scope="module")
def llama_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two real llama-server replicas of SmolLM2 behind a real gateway, routed round-robin (foundation tests)."""
    require_engine()
    stack = start_stack(
        tmp_path_factory.mktemp("stack"), "--replicas", "2", env_extra={"FLEETGATE_ROUTING__POLICY": "round_robin"}
    )
    try:
        yield stack
    finally:
        stop_stack(stack)
