"""Run-directory state and stopping recorded processes by PID (never by name)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fleetgate.local.rundir import ProcRecord, RunDir, RunState, proc_start_time, stop_recorded


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_state_round_trip(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    assert run_dir.read() is None
    state = RunState(status="ready", gateway_url="http://127.0.0.1:1", engines=["http://127.0.0.1:2"])
    state.replicas.append(ProcRecord(pid=1, start_time=5, role="replica", port=3, url="u", id="local-0"))
    run_dir.write(state)
    again = run_dir.read()
    assert again is not None and again.gateway_url == "http://127.0.0.1:1"
    assert again.replicas[0].id == "local-0" and again.replicas[0].start_time == 5
    run_dir.clear()
    assert run_dir.read() is None


def test_recycled_pid_is_not_signalled() -> None:
    proc = _sleeper()
    try:
        record = ProcRecord.of(proc.pid, "replica")
        assert record.alive()
        impostor = ProcRecord(pid=proc.pid, start_time=(record.start_time or 0) + 1, role="replica")
        assert not impostor.alive() and not impostor.signal(9)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_recorded_kills_every_recorded_process() -> None:
    procs = [_sleeper() for _ in range(3)]
    state = RunState(
        supervisor=ProcRecord.of(procs[0].pid, "supervisor"),
        replicas=[ProcRecord.of(p.pid, "replica") for p in procs[1:]],
    )
    stopped = stop_recorded(state, timeout=5)
    for proc in procs:
        proc.wait(timeout=5)
    assert sorted(stopped) == sorted(p.pid for p in procs)
    assert all(proc_start_time(p.pid) is None for p in procs)


def test_stop_recorded_ignores_dead_processes() -> None:
    proc = _sleeper()
    proc.kill()
    proc.wait()
    state = RunState(replicas=[ProcRecord(pid=proc.pid, start_time=123, role="replica")])
    assert stop_recorded(state, timeout=1) == []
