"""A real gateway process whose outbox disk fills up under traffic: refuse cleanly, lose nothing, leak nothing.

The outbox lives on a 1 MiB tmpfs where this machine can mount one (the test id says `tmpfs`); elsewhere the
gateway runs under the fault-injecting file layer of tests/metering/faultfs.py, its outbox writes failing with
ENOSPC while a flag file exists (`fault-layer`). "Full" is a ballast file taking the rest of the tmpfs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import FLEETGATE
from tests.fakes import FakeEngine, free_port
from tests.keys import ADMIN_KEY, DEMO_KEY, KEY_ENV
from tests.metering.faultfs import DISK_KIND, Disk, FaultLayer, Tmpfs
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    """What a client saw."""

    status: int
    request_id: str | None
    complete: bool  # a 200 that arrived whole ([DONE] for a stream)
    retry_after: str | None
    body: Any


@pytest.fixture(params=[DISK_KIND])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    """The outbox's disk: a 1 MiB tmpfs, or the fault layer driven by a flag file."""
    made: Tmpfs | FaultLayer = (
        Tmpfs(tmp_path / "disk", 1 << 20)
        if request.param == "tmpfs"
        else FaultLayer(tmp_path / "disk", flag=tmp_path / "disk-full")
    )
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    """A fake engine whose streams take max_tokens x 50 ms."""
    fake = FakeEngine(model="smollm2", chunks_from_max_tokens=True, delay=0.05)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(tmp_path: Path, disk: Disk, engine: FakeEngine) -> AsyncIterator[str]:
    """`fleetgate up --engine` with its outbox on `disk`; stopped by PID."""
    port = free_port()
    args = ["up", "--engine", engine.url, "--port", str(port), "--no-self-test"]
    if isinstance(disk, FaultLayer):
        assert disk.flag is not None
        command = [sys.executable, "-m", "tests.metering.faultfs", str(disk.flag), "--", *args]
    else:
        command = [*FLEETGATE, *args]
    env = {
        **os.environ,
        **KEY_ENV,
        "FLEETGATE_STATE_DIR": str(tmp_path / "state"),
        "FLEETGATE_METERING__OUTBOX_DIR": str(disk.root / "outbox"),
        "FLEETGATE_METERING__SEGMENT_BYTES": "65536",  # segments rotate and are freed well within 1 MiB
        "FLEETGATE_METERING__FLUSH_INTERVAL": "0.1",
        "FLEETGATE_METERING__OUTBOX_MIN_FREE_BYTES": "0",  # the floor would refuse all of a 1 MiB disk
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=120, interval=0.1, what="the gateway to be ready")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


async def _call(http: aiohttp.ClientSession, url: str, key: str, max_tokens: int, stream: bool = False) -> Reply:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    async with http.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        raw = await resp.read()
        rid, retry_after = resp.headers.get("x-request-id"), resp.headers.get("retry-after")
        if resp.status != 200:
            return Reply(resp.status, rid, False, retry_after, await resp.json(content_type=None))
        complete = raw.rstrip().endswith(b"data: [DONE]") if stream else b'"usage"' in raw
        return Reply(200, rid, complete, retry_after, None)


async def _tenant_key(http: aiohttp.ClientSession, url: str, name: str, **limits: int) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with http.put(f"{url}/admin/tenants/{name}", json=limits, headers=admin) as resp:
        assert resp.status in (200, 201), await resp.text()
    async with http.post(f"{url}/admin/tenants/{name}/keys", json={}, headers=admin) as resp:
        assert resp.status in (200, 201), await resp.text()
        return str((await resp.json())["key"])


def _ledger(state: Path) -> dict[str, tuple[str, int]]:
    db = state / "fleetgate.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT event_id, status, completion_tokens FROM usage_events").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _assert_refusal(reply: Reply) -> None:
    assert reply.status == 503, reply
    assert reply.retry_after is not None and int(reply.retry_after) >= 1, reply
    error = reply.body["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], reply.body


async def test_a_full_outbox_disk_refuses_new_requests_and_loses_nothing(
    gateway: str, disk: Disk, engine: FakeEngine, tmp_path: Path
) -> None:
    url = gateway
    served: set[str] = set()
    refused: set[str] = set()

    def keep(reply: Reply) -> Reply:
        assert reply.status in (200, 503), reply  # never a 500, never a cut stream
        if reply.status == 200:
            assert reply.complete and reply.request_id, reply
            served.add(reply.request_id)
        else:
            _assert_refusal(reply)
            if reply.request_id:
                refused.add(reply.request_id)
        return reply

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        solo = await _tenant_key(http, url, "solo", max_concurrency=1)
        keep(await _call(http, url, DEMO_KEY, 2))
        keep(await _call(http, url, solo, 2))

        # Streams in flight when the disk fills: their finish records meet a full disk; they must still complete.
        before = engine.served
        running = [asyncio.create_task(_call(http, url, DEMO_KEY, 30, stream=True)) for _ in range(4)]
        running.append(asyncio.create_task(_call(http, url, solo, 30, stream=True)))
        await wait_until(lambda: engine.served >= before + 5, timeout=60, what="the streams to reach the engine")
        disk.fill()
        for reply in await asyncio.gather(*running):
            assert keep(reply).status == 200

        # The disk is full: new requests get 503 with Retry-After (a line may still fit in a page already held).
        first_refusal = None
        for _ in range(300):
            reply = keep(await _call(http, url, DEMO_KEY, 2))
            if reply.status == 503:
                first_refusal = reply
                break
        assert first_refusal is not None, "a full outbox disk never refused a request"
        assert keep(await _call(http, url, solo, 2)).status == 503  # its stream's slot was freed, not leaked

        disk.free()

        async def serving_again() -> bool:
            return keep(await _call(http, url, DEMO_KEY, 2)).status == 200

        await wait_until(serving_again, timeout=60, interval=0.2, what="serving once space is back")
        for _ in range(2):  # max_concurrency 1: a leaked slot from the full-disk episode would make this a 429
            assert keep(await _call(http, url, solo, 2)).status == 200

    state = tmp_path / "state"
    await wait_until(lambda: served <= set(_ledger(state)), timeout=60, interval=0.2, what="every served request")
    rows = _ledger(state)
    assert all(rows[rid][0] == "ok" for rid in served), {rid: rows[rid] for rid in served if rows[rid][0] != "ok"}
    assert not [rid for rid in refused if rid in rows and rows[rid][0] != "rejected"]  # refused: never billed
    ok = [rid for rid, (status, _) in rows.items() if status == "ok"]
    assert len(ok) == engine.served == len(served)  # nothing lost, nothing doubled, nothing invented
    assert not list((disk.root / "outbox").glob("dead-letter/*"))
