"""`fleetgate up` in front of a fake engine: generated keys shown whole in the banner (also when output is a file),
kept private on disk, accepted by the gateway, and shown again by `fleetgate status`."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes import FakeEngine, free_port

FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]


def _env(tmp_path: Path) -> dict[str, str]:
    # Shipped defaults only (no FLEETGATE_<SECTION>__ overrides from this shell): the keys are `auto`.
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FLEETGATE_") and "__" in k)}
    env.update({"FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_RUN_DIR": str(tmp_path / "state" / "run")})
    return env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


async def _get(url: str, key: str) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
        http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp,
    ):
        return resp.status


async def test_detached_up_generates_private_keys_that_work(engine: FakeEngine, tmp_path: Path) -> None:
    env, state = _env(tmp_path), tmp_path / "state"
    port = free_port()
    up_args = [*FLEETGATE, "up", "--detach", "--json", "--engine", engine.url, "--port", str(port), "--no-self-test"]
    try:
        up = await asyncio.to_thread(_run, up_args, env, tmp_path)
        assert up.returncode == 0, up.stderr
        info: dict[str, Any] = json.loads(up.stdout)
        stored = json.loads((state / "keys.json").read_text())
        demo, admin = stored["demo_api_key"], stored["admin_api_key"]
        assert (info["demo_api_key"], info["admin_api_key"]) == (demo, admin)
        assert "0123456789abcdef" not in demo + admin
        assert _mode(state) == 0o700 and _mode(state / "run") == 0o700
        for private in ("keys.json", "fleetgate.db", "iolog.db", "run/logs/up.log"):
            if (state / private).exists() or private != "iolog.db":
                assert _mode(state / private) == 0o600, private
        url = f"http://127.0.0.1:{port}"
        assert await _get(f"{url}/v1/models", demo) == 200
        assert await _get(f"{url}/metrics", admin) == 200
        assert await _get(f"{url}/admin/tenants", admin) == 200
        assert await _get(f"{url}/metrics", demo) == 401
        status = await asyncio.to_thread(_run, [*FLEETGATE, "status", "--json"], env, tmp_path)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)["keys"]
        assert (shown["demo_api_key"], shown["admin_api_key"]) == (demo, admin)
        text = await asyncio.to_thread(_run, [*FLEETGATE, "status"], env, tmp_path)
        assert f"demo API key: {demo}" in text.stdout.splitlines()
    finally:
        down = await asyncio.to_thread(_run, [*FLEETGATE, "down", "--json"], env, tmp_path, 60)
        assert down.returncode == 0, down.stderr


async def test_the_banner_prints_whole_lines_when_output_is_not_a_terminal(engine: FakeEngine, tmp_path: Path) -> None:
    env = _env(tmp_path)
    port = free_port()
    log_path = tmp_path / "up.out"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*FLEETGATE, "up", "--engine", engine.url, "--port", str(port), "--no-self-test"],
            env={**env, "COLUMNS": "80"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 90
        while "print(reply.choices[0].message.content)\n" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.1)
        keys = json.loads((tmp_path / "state" / "keys.json").read_text())
        lines = log_path.read_text().splitlines()
        url = f"http://127.0.0.1:{port}"
        assert f"Demo API key: {keys['demo_api_key']}" in lines
        assert any(line.endswith(keys["admin_api_key"]) and line.startswith("Admin key") for line in lines)
        curl = next(line for line in lines if line.startswith("curl "))
        assert len(curl) > 80 and keys["demo_api_key"] in curl and curl.endswith('"max_tokens": 32}\'')
        last = "print(reply.choices[0].message.content)"
        snippet = "\n".join(lines[lines.index("from openai import OpenAI") : lines.index(last) + 1])
        assert f'client = OpenAI(base_url="{url}/v1", api_key="{keys["demo_api_key"]}")' in snippet
        # Pasted as printed (the model named, as `up --engine` cannot know it ahead): both answer.
        pasted = [*shlex.split(curl.replace("<model>", engine.model)), "-s", "--max-time", "20"]
        reply = await asyncio.to_thread(subprocess.run, pasted, capture_output=True, text=True, timeout=30)
        assert json.loads(reply.stdout)["choices"][0]["message"]["content"], reply.stdout
        sdk = await asyncio.to_thread(
            _run, [sys.executable, "-c", snippet.replace("<model>", engine.model)], env, tmp_path, 60
        )
        assert sdk.returncode == 0 and sdk.stdout.strip(), sdk.stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
