"""The ledger worker process: busy flusher passes insert from it, exactly as the gateway would, and survive its
death; small passes stay in the gateway; it dies with the process that started it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetgate.metering.flusher import Flusher
from fleetgate.metering.ledger import SqlLedger
from fleetgate.metering.ledger_worker import LedgerWorker
from fleetgate.metering.outbox import Outbox
from tests.metering.test_outbox import _event, _start


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[SqlLedger]:
    store = await SqlLedger.open(f"sqlite:///{tmp_path}/ledger.db")
    yield store
    await store.close()


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox", segment_bytes=1 << 20, fsync_interval=0)
    box.open()
    return box


def _finish(outbox: Outbox, ids: range, prefix: str = "r") -> None:
    for i in ids:
        outbox.started(_start(f"{prefix}{i}"))
        outbox.finished(_event(f"{prefix}{i}", completion=i))


async def _requests(ledger: SqlLedger) -> int:
    return sum(row.requests for row in await ledger.daily())


async def test_a_busy_pass_inserts_from_the_worker_once(tmp_path: Path, outbox: Outbox, ledger: SqlLedger) -> None:
    worker = LedgerWorker(str(tmp_path / "ledger.db"), batch_size=7, min_bytes=0)
    flusher = Flusher(outbox, ledger, ledger_worker=worker)
    try:
        _finish(outbox, range(40))
        assert await flusher.flush_once() == 40
        assert worker.started == 1
        rows = (await ledger.events(limit=100)).events
        assert sorted(e.event_id for e in rows) == sorted(f"r{i}" for i in range(40))
        assert sum(e.completion_tokens for e in rows) == sum(range(40))
        assert await _requests(ledger) == 40  # roll-ups in step with the rows
        for ckpt in outbox.directory.glob("*.ckpt"):
            ckpt.unlink()  # a lost checkpoint: the whole segment is delivered again
        assert await flusher.flush_once() == 40
        assert await _requests(ledger) == 40  # and counted once
    finally:
        await flusher.stop()


async def test_a_small_pass_stays_in_the_gateway(tmp_path: Path, outbox: Outbox, ledger: SqlLedger) -> None:
    worker = LedgerWorker(str(tmp_path / "ledger.db"), batch_size=500, min_bytes=1 << 30)
    flusher = Flusher(outbox, ledger, ledger_worker=worker)
    _finish(outbox, range(5))
    assert await flusher.flush_once() == 5
    assert worker.started == 0 and await _requests(ledger) == 5
    await flusher.stop()


async def test_a_killed_worker_is_replaced_and_nothing_is_lost_or_doubled(
    tmp_path: Path, outbox: Outbox, ledger: SqlLedger
) -> None:
    worker = LedgerWorker(str(tmp_path / "ledger.db"), batch_size=500, min_bytes=0)
    flusher = Flusher(outbox, ledger, ledger_worker=worker)
    try:
        _finish(outbox, range(10))
        assert await flusher.flush_once() == 10
        assert worker._pool is not None
        (pid,) = list(worker._pool._processes)  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        _finish(outbox, range(10), prefix="s")
        assert await flusher.flush_once() == 0  # this pass fails: the events stay in the outbox
        assert flusher.consumers[0].failing_since is not None
        async with asyncio.timeout(10):
            while await flusher.flush_once() == 0:  # the retry waits out the back-off, then a new worker
                await asyncio.sleep(0.1)
        assert worker.started == 2
        assert await _requests(ledger) == 20
    finally:
        await flusher.stop()


def test_the_worker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, pathlib, sys
        from fleetgate.metering.ledger import SqlLedger
        from fleetgate.metering.ledger_worker import LedgerWorker
        from fleetgate.metering.outbox import Outbox

        async def main():
            ledger = await SqlLedger.open("sqlite:///{tmp_path}/ledger.db")
            segment = pathlib.Path("{tmp_path}/empty.log")
            segment.write_bytes(b"")
            worker = LedgerWorker("{tmp_path}/ledger.db", 500, 0)
            await worker.insert_range(segment, 0, 0)
            print(*worker._pool._processes, flush=True)
            await asyncio.sleep(3600)

        if __name__ == "__main__":
            asyncio.run(main())
        """
    )
    (tmp_path / "parent.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], stdout=subprocess.PIPE, text=True)
    worker_pid = 0
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        os.kill(worker_pid, 0)  # alive while its parent is
        parent.kill()  # SIGKILL: no clean-up code runs in the parent
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker_pid):
            assert time.monotonic() < deadline, f"worker {worker_pid} outlived its killed parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        if worker_pid and _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)  # the failure case: leave no orphan behind


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited; its parent (init) reaps it
