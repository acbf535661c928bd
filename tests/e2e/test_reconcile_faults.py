"""Reconcile on a real llama.cpp fleet after faults, not only on happy paths: clients that hang up mid-stream, a
replica killed under traffic (requests retried on the other), and a gateway SIGKILLed mid-stream and restarted
(its outbox adopted) while the engines run on. Drift = engine counters - ledger, per replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetgate.config import LocalFleetConfig
from fleetgate.local.build import cached_build
from fleetgate.local.launcher import llama_server_args
from fleetgate.local.model import resolve_model
from fleetgate.local.rundir import proc_start_time
from tests.e2e.conftest import DEMO_KEY, FLEETGATE, Stack, require_engine, start_stack, stop_stack
from tests.fakes import free_port
from tests.keys import KEY_ENV

pytestmark = pytest.mark.e2e

SYSTEM = "You are terse. " * 40  # a shared prefix: later requests find it cached
AUTH = {"Authorization": f"Bearer {DEMO_KEY}"}


def body(i: int, max_tokens: int, stream: bool, model: str = "smollm2") -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Count to fifty ({i})."}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}


async def complete(http: aiohttp.ClientSession, url: str, i: int, stream: bool = False) -> None:
    """One request read to its end."""
    async with http.post(f"{url}/v1/chat/completions", json=body(i, 6, stream), headers=AUTH) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        assert not stream or "[DONE]" in text


async def hang_up(http: aiohttp.ClientSession, url: str, i: int, after_chunks: int = 4) -> None:
    """A streamed request the client leaves after a few content chunks (the engine is still generating)."""
    async with http.post(f"{url}/v1/chat/completions", json=body(i, 200, True), headers=AUTH) as resp:
        assert resp.status == 200
        seen = 0
        async for line in resp.content:
            seen += line.startswith(b"data: {") and b'"content"' in line
            if seen >= after_chunks:
                resp.close()  # hang up mid-stream: the connection goes, the engine is told to stop
                break


def drifts(cli: Any, *extra: str, expected_requests: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Reconcile until drift is 0 everywhere and the ledger holds every request, or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = cli("usage", "reconcile", "--json", *extra)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)["replicas"]
        done = sum(r["requests"] for r in rows) >= expected_requests
        if (rows and done and all(_zero(r) for r in rows)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)  # events may still be on their way from the outbox


def _zero(row: dict[str, Any]) -> bool:
    return row["error"] is None and row["prompt_drift"] == 0 and row["completion_drift"] == 0


def explain(rows: list[dict[str, Any]], env: dict[str, str]) -> str:
    """Drifts and the ledger's events, for a failure message."""
    keys = ("replica_id", "requests", "ledger_prompt", "engine_prompt", "ledger_completion", "engine_completion")
    lines = [json.dumps({k: r[k] for k in (*keys, "error")}) for r in rows]
    db = Path(env["FLEETGATE_STATE_DIR"]) / "fleetgate.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            found = conn.execute(
                "SELECT replica_id, status, usage_source, prompt_tokens, cached_tokens, completion_tokens, started_at"
                " FROM usage_events ORDER BY started_at"
            ).fetchall()
        lines += [repr(r) for r in found]
    return "\n".join(lines)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Stack]:
    """Two local llama.cpp replicas, round robin so that both serve (the score router would keep the shared prefix
    on one)."""
    require_engine()
    stack = start_stack(tmp_path, "--replicas", "2", env_extra={"FLEETGATE_ROUTING__POLICY": "round_robin"})
    try:
        yield stack
    finally:
        stop_stack(stack)


def _replica(stack: Stack, rid: str) -> dict[str, Any]:
    return next(r for r in stack.state()["replicas"] if r["id"] == rid)


async def _wait_restarted(stack: Stack, rid: str, old_pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(stack.cli("status", "--json").stdout)
        replica = next((r for r in status["replicas"] if r["id"] == rid), None)
        if replica is not None and replica.get("pid") != old_pid and replica.get("healthy"):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{rid} was not restarted within {timeout} s")


async def test_drift_zero_with_a_replica_killed_under_traffic(fleet: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for i in range(4):
            await complete(http, fleet.url, i, stream=bool(i % 2))
        victim = _replica(fleet, "local-1")
        os.kill(victim["pid"], signal.SIGKILL)  # by PID; the supervisor restarts it
        for i in range(4, 10):  # those routed to local-1 fail before any byte and are retried on local-0
            await complete(http, fleet.url, i, stream=bool(i % 2))
        await _wait_restarted(fleet, "local-1", victim["pid"])
        for i in range(10, 14):
            await complete(http, fleet.url, i, stream=bool(i % 2))
    rows = drifts(fleet.cli, expected_requests=1)
    assert sorted(r["replica_id"] for r in rows) == ["local-0", "local-1"], rows
    # local-1's counters restarted with its process: it is compared over the requests it served since.
    assert all(r["requests"] > 0 for r in rows), explain(rows, fleet.env)
    assert all(_zero(r) for r in rows), explain(rows, fleet.env)


async def test_drift_zero_after_client_aborts(fleet: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for i in range(4):
            await complete(http, fleet.url, i, stream=bool(i % 2))  # both replicas hold the shared prefix
        for i in range(4, 10):
            await hang_up(http, fleet.url, i, after_chunks=2 + i)
    rows = drifts(fleet.cli, expected_requests=10, timeout=20)
    assert sum(r["requests"] for r in rows) == 10, explain(rows, fleet.env)
    # Prompt and cached tokens are exact: the aborted stream's last `timings` (llama.cpp's running counts,
    # timings_per_token) carry them. Output is exact up to what the engine generated after the last chunk it
    # sent and before it saw the connection close: measured 0-2 tokens per abort here, never billed, never
    # negative (docs/architecture.md, Reconcile).
    for r in rows:
        assert r["error"] is None and r["prompt_drift"] == 0 and r.get("cached_drift", 0) == 0, explain(rows, fleet.env)
        assert 0 <= r["completion_drift"] <= 2 * 6, explain(rows, fleet.env)
    assert sum(r["completion_drift"] for r in rows) <= 2 * 6, explain(rows, fleet.env)


# --- a gateway killed mid-stream while its engines run on -------------------------------------------------


async def _ready(url: str, path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                async with http.get(f"{url}{path}") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{url} did not become ready")


async def _start_engine(tmp: Path, index: int, alias: str) -> tuple[subprocess.Popen[bytes], str]:
    build = cached_build()
    assert build is not None
    port = free_port()
    args = llama_server_args(build.binary, resolve_model(None), port, LocalFleetConfig(model_alias=alias))
    log = tmp / f"engine-{index}.log"
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    await _ready(url, "/health", proc, log)
    return proc, url


async def _gateway(tmp: Path, urls: list[str], env: dict[str, str], n: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    engines = [a for u in urls for a in ("--engine", u)]
    log = tmp / f"gateway-{n}.log"
    out = log.open("wb")
    proc = subprocess.Popen(
        [*FLEETGATE, "up", *engines, "--port", str(port), "--no-self-test"], env=env, stdout=out, stderr=out
    )
    url = f"http://127.0.0.1:{port}"
    await _ready(url, "/readyz", proc, log)
    return proc, url


async def test_drift_after_a_gateway_kill_mid_stream(tmp_path: Path) -> None:
    """engine-0 and engine-1 serve `smollm2` before and after the kill; engine-2 serves only the stream cut by
    it (as `lost`), so its row shows what a gateway_lost event cannot know."""
    require_engine()
    env = {**os.environ, "FLEETGATE_STATE_DIR": str(tmp_path / "state"), "FLEETGATE_RUN_DIR": str(tmp_path / "run")}
    env.update(KEY_ENV)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for index, alias in enumerate(["smollm2", "smollm2", "lost"]):
            proc, engine_url = await _start_engine(tmp_path, index, alias)
            procs.append(proc)
            urls.append(engine_url)
        since = min(_started(p.pid) for p in procs)
        first, url = await _gateway(tmp_path, urls, env, 1)
        procs.append(first)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            for i in range(4):
                await complete(http, url, i, stream=bool(i % 2))
            cut = body(99, 200, True, model="lost")
            async with http.post(f"{url}/v1/chat/completions", json=cut, headers=AUTH) as resp:
                async for line in resp.content:
                    if b'"content"' in line:
                        break  # the stream runs: kill the gateway under it
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            second, url = await _gateway(tmp_path, urls, env, 2)  # adopts the dead gateway's outbox
            procs.append(second)
            for i in range(4, 8):
                await complete(http, url, i, stream=bool(i % 2))
        rows = {r["replica_id"]: r for r in drifts(_cli(env), "--since", str(since), expected_requests=9, timeout=20)}
        assert sorted(rows) == ["engine-0", "engine-1", "engine-2"], rows
        assert {r["kind"] for r in rows.values()} == {"llamacpp"}, rows  # asked from the engines, not configured
        served = [rows["engine-0"], rows["engine-1"]]
        assert sum(r["requests"] for r in served) == 8 and all(_zero(r) for r in served), explain(served, env)
        lost = rows["engine-2"]
        # The cut request is in the ledger once, as lost, with no output: the engine's output for it is the drift,
        # at most its max_tokens (see docs/architecture.md, Reconcile).
        assert lost["requests"] == 1 and lost["ledger_completion"] == 0, explain([lost], env)
        assert 0 < lost["completion_drift"] <= 200, explain([lost], env)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _cli(env: dict[str, str]) -> Any:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FLEETGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    return run


def _started(pid: int) -> float:
    ticks = proc_start_time(pid)
    assert ticks is not None
    btime = next(int(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")
