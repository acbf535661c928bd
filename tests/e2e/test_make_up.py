"""README's first command: `make up` brings the stack up with freshly generated keys, prints lines that can be
pasted as they are (also when output is not a terminal), serves a real request, and `fleetgate down` ends it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
from pathlib import Path

import openai
import pytest

from fleetgate.local.rundir import proc_start_time
from tests.e2e.conftest import FLEETGATE, require_engine
from tests.fakes import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_make_up_serves_and_down_stops_everything(tmp_path: Path) -> None:
    require_engine()
    run_dir = tmp_path / "run"
    state_dir = tmp_path / "state"  # a first start: no key file yet
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FLEETGATE_") and "__" in k)}
    env.update(
        {"FLEETGATE_STATE_DIR": str(state_dir), "FLEETGATE_RUN_DIR": str(run_dir), "FLEETGATE_GATEWAY__PORT": str(port)}
    )
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
        # `make up` runs with the shipped defaults, which keep the serving replica's name to the operator.
        assert re.search(r"self-test: smollm2 answered .+ \(\d+ tokens\)", output), output[-3000:]
        keys = json.loads((state_dir / "keys.json").read_text())
        demo_key = keys["demo_api_key"]
        assert "0123456789abcdef" not in demo_key + keys["admin_api_key"]
        assert stat.S_IMODE((state_dir / "keys.json").stat().st_mode) == 0o600
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        lines = output.splitlines()
        assert f"Demo API key: {demo_key}" in lines and "from openai import OpenAI" in lines
        curl = next(line for line in lines if line.startswith(f"curl http://127.0.0.1:{port}/"))
        assert demo_key in curl and curl.endswith('"max_tokens": 32}\'')  # whole, though the output is a file
        pasted = subprocess.run(
            [*shlex.split(curl), "-s", "--max-time", "120"], capture_output=True, text=True, timeout=150
        )
        assert json.loads(pasted.stdout)["usage"]["completion_tokens"] > 0, pasted.stdout[-2000:]
        status = subprocess.run([*FLEETGATE, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["keys"]["demo_api_key"] == demo_key
        state = json.loads((run_dir / "state.json").read_text())
        assert state["gateway_url"] == f"http://127.0.0.1:{port}"
        pids = [state["supervisor"]["pid"], *(r["pid"] for r in state["replicas"])]
        assert len(pids) == 3

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=demo_key, max_retries=0, timeout=60)
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
