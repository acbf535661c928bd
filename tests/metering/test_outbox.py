"""Outbox and flusher: at-least-once delivery, idempotent replays, rotation, adopting a killed process's outbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fleetgate.metering.events import UsageEvent
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.outbox import Outbox, StartRecord, parse_lines


class MemoryLedger:
    """A ledger double with the real contract: insert keyed by event_id."""

    def __init__(self) -> None:
        self.rows: dict[str, UsageEvent] = {}
        self.calls = 0
        self.down = False

    async def insert(self, events: list[UsageEvent]) -> int:
        if self.down:
            raise ConnectionError("ledger down")
        self.calls += 1
        new = [e for e in events if e.event_id not in self.rows]
        for event in new:
            self.rows[event.event_id] = event
        return len(new)


class ListSink:
    """A sink double that can be down."""

    name = "list"

    def __init__(self) -> None:
        self.received: list[str] = []
        self.down = False

    async def publish(self, events: list[UsageEvent]) -> None:
        if self.down:
            raise ConnectionError("sink down")
        self.received += [e.event_id for e in events]

    async def close(self) -> None:
        pass


def _start(rid: str) -> StartRecord:
    return StartRecord(
        id=rid,
        tenant_id="t",
        key_id="k",
        model="m",
        adapter=None,
        replica_id="r0",
        engine="llamacpp",
        gpu_type="cpu",
        started_at=time.time(),
        stream=True,
        endpoint="chat",
        est_prompt_tokens=11,
    )


def _event(rid: str, completion: int = 5) -> UsageEvent:
    now = time.time()
    return UsageEvent(
        event_id=rid,
        tenant_id="t",
        key_id="k",
        model="m",
        adapter=None,
        replica_id="r0",
        engine="llamacpp",
        gpu_type="cpu",
        started_at=now,
        first_token_at=now,
        ended_at=now,
        prompt_tokens=20,
        cached_tokens=4,
        completion_tokens=completion,
        status="ok",
        usage_source="engine",
        stream=True,
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox", segment_bytes=1 << 20, fsync_interval=0)
    box.open()
    return box


async def test_delivers_each_finished_event_once(outbox: Outbox) -> None:
    ledger = MemoryLedger()
    flusher = Flusher(outbox, ledger)
    for i in range(10):
        outbox.started(_start(f"r{i}"))
        outbox.finished(_event(f"r{i}"))
    outbox.started(_start("open"))
    assert await flusher.flush_once() == 10
    assert await flusher.flush_once() == 0  # the checkpoint remembers
    assert sorted(ledger.rows) == sorted(f"r{i}" for i in range(10))
    assert outbox.open_requests == 1


async def test_replay_after_lost_checkpoint_is_harmless(outbox: Outbox) -> None:
    ledger = MemoryLedger()
    outbox.finished(_event("a"))
    await Flusher(outbox, ledger).flush_once()
    for ckpt in outbox.directory.glob("*.ckpt"):
        ckpt.unlink()
    await Flusher(outbox, ledger).flush_once()  # delivers "a" again: the ledger's key makes it a no-op
    assert list(ledger.rows) == ["a"] and ledger.calls == 2


async def test_torn_tail_waits_for_the_rest(outbox: Outbox) -> None:
    ledger = MemoryLedger()
    line = b'{"t":"f","e":' + _event("late").to_json() + b"}\n"
    os.write(outbox._fd, line[:20])  # a write cut in half (the process died mid-write)
    assert await Flusher(outbox, ledger).flush_once() == 0
    os.write(outbox._fd, line[20:])
    assert await Flusher(outbox, ledger).flush_once() == 1


def test_parse_lines_reports_offsets() -> None:
    records, used = parse_lines(b'{"a":1}\n{"b":2}\n{"c"', base=100)
    assert [r for _, r in records] == [{"a": 1}, {"b": 2}]
    assert [end for end, _ in records] == [108, 116] and used == 16


async def test_rotation_carries_open_starts_and_deletes_delivered_segments(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", segment_bytes=4096, fsync_interval=0)
    box.open()
    ledger = MemoryLedger()
    flusher = Flusher(box, ledger)
    box.started(_start("long-running"))
    for i in range(40):
        box.started(_start(f"r{i}"))
        box.finished(_event(f"r{i}"))
    assert box.seq > 0
    await flusher.flush_once()
    assert len(ledger.rows) == 40
    segments = sorted(p.name for p in box.directory.glob("*.log"))
    assert segments == [box.active_segment.name]  # every delivered, rotated-away segment is gone
    assert b'"long-running"' in box.active_segment.read_bytes()  # its start was carried forward
    box.finished(_event("long-running"))
    await flusher.flush_once()
    assert "long-running" in ledger.rows


async def test_ledger_outage_keeps_events_and_catches_up(outbox: Outbox) -> None:
    ledger, sink = MemoryLedger(), ListSink()
    flusher = Flusher(outbox, ledger, [sink])
    ledger.down = True
    outbox.finished(_event("a"))
    assert await flusher.flush_once() == 0
    assert sink.received == ["a"]  # a ledger outage does not hold back the sink
    ledger.down = False
    flusher.consumers[0].retry_at = 0  # skip the back-off in the test
    assert await flusher.flush_once() == 1
    assert list(ledger.rows) == ["a"] and sink.received == ["a"]


async def test_sink_outage_never_blocks_the_ledger(outbox: Outbox) -> None:
    ledger, sink = MemoryLedger(), ListSink()
    flusher = Flusher(outbox, ledger, [sink])
    sink.down = True
    outbox.finished(_event("a"))
    outbox.finished(_event("b"))
    assert await flusher.flush_once() == 2
    assert sink.received == []
    sink.down = False
    flusher.consumers[1].retry_at = 0
    await flusher.flush_once()
    assert sink.received == ["a", "b"]


WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from fleetgate.metering.outbox import Outbox
    from tests.metering.test_outbox import _event, _start

    box = Outbox(Path(sys.argv[1]), fsync_interval=0)
    box.open()
    for i in range(5):
        box.started(_start(f"done{i}"))
        box.finished(_event(f"done{i}"))
    box.started(_start("cut-counted"))
    box.prompt_counted("cut-counted", 33)
    box.started(_start("cut-estimated"))
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


async def test_a_killed_process_outbox_is_adopted(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    proc = subprocess.run(
        [sys.executable, "-c", WRITER, str(directory)], cwd=Path(__file__).resolve().parents[2], timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    survivor = Outbox(directory, fsync_interval=0)
    survivor.open()
    ledger = MemoryLedger()
    flusher = Flusher(survivor, ledger)
    await flusher.flush_once()
    await flusher.flush_once()  # the lost events were written to our own outbox by the first pass
    assert sorted(ledger.rows) == sorted([*(f"done{i}" for i in range(5)), "cut-counted", "cut-estimated"])
    counted, estimated = ledger.rows["cut-counted"], ledger.rows["cut-estimated"]
    assert counted.status == estimated.status == "gateway_lost"
    assert (counted.prompt_tokens, counted.usage_source) == (33, "engine")
    assert (estimated.prompt_tokens, estimated.usage_source) == (11, "estimate")
    assert counted.completion_tokens == 0
    assert ledger.rows["done0"].status == "ok"
    leftovers = {p.name for p in directory.iterdir()} - {survivor.active_segment.name, f"{survivor.owner}.lock"}
    assert {n for n in leftovers if not n.endswith(".ckpt")} == set()  # the dead outbox is drained and removed
    # A second survivor finds nothing more to recover: no duplicates.
    again = Flusher(survivor, ledger)
    await again.flush_once()
    assert again.recovered_lost == 0 and len(ledger.rows) == 7


async def test_a_live_process_outbox_is_not_adopted(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    alive, other = Outbox(directory, fsync_interval=0), Outbox(directory, fsync_interval=0)
    alive.open()
    other.open()
    alive.started(_start("in-flight"))
    flusher = Flusher(other, MemoryLedger())
    await flusher.flush_once()
    assert flusher.recovered_lost == 0  # its owner still holds the lock
