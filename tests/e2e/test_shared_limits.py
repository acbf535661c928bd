"""Two gateway processes sharing one Redis (the session's own) enforce one tenant's limits together."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import FLEETGATE
from tests.fakes import FakeEngine, free_port
from tests.keys import ADMIN_KEY, KEY_ENV

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                pytest.fail(f"gateway exited: {log.read_text()[-2000:]}")
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"gateway {url} not ready: {log.read_text()[-2000:]}")


@pytest.fixture
async def two_gateways(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[list[str], FakeEngine]]:
    engine = FakeEngine(model="smollm2")
    await engine.start()
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for index in range(2):
            port = free_port()
            env = {
                **os.environ,
                "FLEETGATE_RUN_DIR": str(tmp_path / f"run{index}"),
                **KEY_ENV,
                "FLEETGATE_DATABASE__URL": f"sqlite:///{tmp_path / 'shared.db'}",
                "FLEETGATE_LIMITS__BACKEND": "redis",
                "FLEETGATE_LIMITS__REDIS_URL": redis_url,
                "FLEETGATE_LIMITS__ON_REDIS_ERROR": "fail_closed",
                "FLEETGATE_TENANCY__POLL_INTERVAL": "0.2",
            }
            log = tmp_path / f"gw{index}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [*FLEETGATE, "up", "--engine", engine.url, "--port", str(port), "--no-self-test"],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
            await _wait_ready(urls[-1], procs[-1], log)
        yield urls, engine
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
        await engine.stop()


async def test_rpm_holds_across_two_gateways(two_gateways: tuple[list[str], FakeEngine]) -> None:
    urls, engine = two_gateways
    rpm = 20
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        resp = await http.put(f"{urls[0]}/admin/tenants/shared", json={"rpm": rpm}, headers=ADMIN)
        assert resp.status == 201
        resp = await http.post(f"{urls[0]}/admin/tenants/shared/keys", json={}, headers=ADMIN)
        key = (await resp.json())["key"]
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

        async def one(i: int) -> int:
            async with http.post(f"{urls[i % 2]}/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
                if r.status == 429:
                    assert int(r.headers["retry-after"]) >= 1
                return r.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(one(i) for i in range(3 * rpm)))
        elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # One bucket's burst plus what refills while the test runs, shared by both processes; never rpm x 2.
    assert admitted <= rpm + rpm / 60 * elapsed + 1, (admitted, elapsed)
    assert admitted >= rpm - 1  # and the limit is not stricter than configured
    assert engine.served == admitted
