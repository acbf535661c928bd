"""README's first command: `make up` brings the stack up, serves a real request, and `fleetgate down` ends it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import openai
import pytest

from fleetgate.fleet.local.rundir import proc_start_time
from tests.e2e.conftest import DEMO_KEY, FLEETGATE, require_engine
from tests.fakes import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_make_up_serves_and_down_stops_everything(tmp_path: Path) -> None:
    require_engine()
    run_dir = tmp_path / "run"
    port = free_port()
    env = {**os.environ, "FLEETGATE_RUN_DIR": str(run_dir), "FLEETGATE_GATEWAY__PORT": str(port)}
    log = (tmp_path / "make-up.log").open("w")
    make = subprocess.Popen(
        ["make", "--no-print-directory", "up"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        output = ""
        while time.monotonic() < deadline:
            output = (tmp_path / "make-up.log").read_text()
            if "self-test:" in output or make.poll() is not None:
                break
            time.sleep(0.5)
        assert "self-test: smollm2 on local-" in output, output[-3000:]
        assert DEMO_KEY in output and "curl http://127.0.0.1:" in output and "from openai import OpenAI" in output
        state = json.loads((run_dir / "state.json").read_text())
        assert state["gateway_url"] == f"http://127.0.0.1:{port}"
        pids = [state["supervisor"]["pid"], *(r["pid"] for r in state["replicas"])]
        assert len(pids) == 3

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEMO_KEY, max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=4,
        )
        assert reply.usage is not None and reply.usage.completion_tokens > 0

        down = subprocess.run([*FLEETGATE, "down"], env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert make.wait(timeout=60) == 0  # `up` drained and exited cleanly
        assert all(proc_start_time(pid) is None for pid in pids)
        assert not (run_dir / "state.json").exists()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        log.close()
