"""The supervisor starts, restarts and stops replica processes (with a stand-in binary: fast, no model)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from fleetgate.config import LocalFleetConfig
from fleetgate.domain.errors import FleetError
from fleetgate.local.launcher import LlamaCppLauncher
from fleetgate.local.rundir import proc_start_time
from fleetgate.local.supervisor import Supervisor

FAKE = Path(__file__).with_name("fake_llama_server.py")


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    script = tmp_path / "llama-server"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _gone(pid: int) -> bool:
    return proc_start_time(pid) is None


async def test_start_restart_stop(tmp_path: Path, fake_binary: Path) -> None:
    cfg = LocalFleetConfig(replicas=2, start_timeout=20, restart_backoff_max=1)
    sup = Supervisor(cfg, LlamaCppLauncher(cfg, fake_binary, tmp_path / "model.gguf"), tmp_path / "logs")
    replicas = await sup.start()
    try:
        assert [r.id for r in replicas] == ["local-0", "local-1"]
        assert all(r.healthy and r.models == {"smollm2"} for r in replicas)
        first = sup.replicas[0]
        assert first.proc is not None
        old_pid = first.proc.pid
        os.kill(old_pid, signal.SIGKILL)  # a crash
        for _ in range(100):
            if first.restarts == 1 and first.replica.healthy:
                break
            await asyncio.sleep(0.1)
        assert first.restarts == 1 and first.replica.healthy
        assert first.proc.pid != old_pid
    finally:
        pids = [r.proc.pid for r in sup.replicas if r.proc]
        await sup.stop()
    assert all(_gone(pid) for pid in pids)
    assert not any(r.healthy for r in replicas)


async def test_replica_that_cannot_start_reports_its_log(
    tmp_path: Path, fake_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EXIT_CODE", "3")
    cfg = LocalFleetConfig(replicas=1, start_timeout=10)
    sup = Supervisor(cfg, LlamaCppLauncher(cfg, fake_binary, tmp_path / "m"), tmp_path / "logs")
    with pytest.raises(FleetError) as info:
        await sup.start()
    assert "exited with code 3" in str(info.value)
    assert "failing on purpose" in str(info.value)


async def test_launcher_environment_reaches_the_replica(tmp_path: Path, fake_binary: Path) -> None:
    """A launcher's extra environment (vLLM's core binding, offline flags) is what the replica process sees."""
    from fleetgate.local.launcher import LaunchSpec

    cfg = LocalFleetConfig(replicas=1, start_timeout=20)
    base = LlamaCppLauncher(cfg, fake_binary, tmp_path / "m")

    class WithEnv(LlamaCppLauncher):
        kind = "vllm"
        id_prefix = "vllm"

        def spec(self, port: int, index: int) -> LaunchSpec:
            return LaunchSpec(base.spec(port, index).argv, {"FLEETGATE_TEST_MARK": f"replica-{index}"})

    sup = Supervisor(cfg, WithEnv(cfg, fake_binary, tmp_path / "m"), tmp_path / "logs")
    replicas = await sup.start()
    try:
        assert [(r.id, r.kind) for r in replicas] == [("vllm-0", "vllm")]
        proc = sup.replicas[0].proc
        assert proc is not None
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"FLEETGATE_TEST_MARK=replica-0" in environ
    finally:
        await sup.stop()
