"""The outbox on a full or failing disk: never serve what cannot be recorded, never lose what was served.

Tests parametrized with `disk` run on a real tiny tmpfs where this machine can mount one, else on the
fault-injecting layer (the test id says which; see faultfs.py). Failing fsyncs and truncates exist only in the
fault layer, so those tests always use it.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fleetgate.metering import disk as disk_module
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.flusher import Flusher
from fleetgate.metering.outbox import Outbox, OutboxUnavailable, parse_lines
from tests.metering.faultfs import DISK_KIND, Disk, FaultLayer, Tmpfs
from tests.metering.test_outbox import MemoryLedger, _event, _start


@pytest.fixture(params=[DISK_KIND])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    """A disk that can be filled: tmpfs (256 KiB) if mountable here, else the fault layer."""
    made: Tmpfs | FaultLayer = (
        Tmpfs(tmp_path / "disk", 256 * 1024) if request.param == "tmpfs" else FaultLayer(tmp_path / "disk")
    )
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def layer(tmp_path: Path) -> FaultLayer:
    """The fault-injecting layer (for faults a real filesystem will not produce on demand)."""
    return FaultLayer(tmp_path / "disk")


def _outbox(disk: Disk, **kwargs: object) -> Outbox:
    box = Outbox(disk.root / "outbox", **{"segment_bytes": 1 << 20, "fsync_interval": 0, **kwargs})  # type: ignore[arg-type]
    disk.install(box)
    box.open()
    return box


def _fill_until_refused(box: Outbox, disk: Disk) -> tuple[str, OutboxUnavailable]:
    """Fill the disk, then start requests until one is refused (on tmpfs a line may still fit in a page the
    segment already holds); returns the refused request's id and the refusal."""
    disk.fill()
    for i in range(200):
        try:
            box.started(_start(f"pad{i}"))
        except OutboxUnavailable as refused:
            return f"pad{i}", refused
    raise AssertionError("the full disk never refused a start")


def _lines(box: Outbox) -> list[bytes]:
    data = b"".join(p.read_bytes() for p in sorted(box.directory.glob("*.log")))
    return data.split(b"\n")


def _assert_every_line_parses(box: Outbox) -> None:
    lines = [line for line in _lines(box) if line]
    records, _ = parse_lines(b"\n".join(lines) + b"\n")
    assert len(records) == len(lines), "a torn or glued line is in the outbox"


def test_enospc_on_start_refuses_the_request_and_writes_no_record(disk: Disk) -> None:
    box = _outbox(disk)
    refused_id, refused = _fill_until_refused(box, disk)
    assert not isinstance(refused, OSError)  # the relay reads OSError as a client disconnect
    assert refused.reason == "write_failed" and refused.retry_after > 0
    assert f'"{refused_id}"'.encode() not in b"".join(_lines(box))
    assert refused_id not in [s for s in box._open]
    _assert_every_line_parses(box)
    assert box.refused == {"write_failed": 1} and box.write_failures >= 1
    box.close()


async def test_enospc_on_finish_keeps_the_record_and_writes_it_once_space_returns(disk: Disk) -> None:
    box = _outbox(disk)
    box.started(_start("served"))
    box.started(_start("later"))
    _fill_until_refused(box, disk)
    box.finished(_event("served"))  # must not raise: the client already has its answer
    assert box.pending_lines == 1
    assert box.refusal_reason == "finish_pending" and not box.accepting
    with pytest.raises(OutboxUnavailable) as refused:
        box.started(_start("new"))
    assert refused.value.reason == "finish_pending"
    disk.free()
    await box.tick(sync=False)  # what the background tick does
    assert box.pending_lines == 0 and box.accepting
    box.started(_start("new"))
    box.finished(_event("later"))
    box.finished(_event("new"))
    ledger = MemoryLedger()
    await Flusher(box, ledger).flush_once()
    assert {"served", "later", "new"} <= set(ledger.rows)
    assert sum(line.count(b'"event_id":"served"') for line in _lines(box)) == 1  # written exactly once
    _assert_every_line_parses(box)
    box.close()


async def test_a_start_stays_carried_until_its_kept_finish_is_written(layer: FaultLayer) -> None:
    box = _outbox(layer, segment_bytes=4096)
    box.started(_start("served"))
    layer.fill()
    box.finished(_event("served"))
    assert box.open_requests == 1  # its start must survive a rotation until the finish is on disk
    layer.free()
    for i in range(30):  # enough to rotate: the kept finish goes first, then the start is no longer carried
        if i == 0:
            box.retry_pending()
        box.started(_start(f"r{i}"))
        box.finished(_event(f"r{i}"))
    assert box.seq > 0 and box.open_requests == 0
    assert b'"served"' not in box.active_segment.read_bytes()
    box.close()


def test_a_short_write_is_rolled_back_and_the_next_record_is_intact(layer: FaultLayer) -> None:
    box = _outbox(layer)
    box.started(_start("before"))
    size = box.active_segment.stat().st_size
    layer.accept_then_full = 40  # the disk takes 40 bytes of the line, then is full
    with pytest.raises(OutboxUnavailable):
        box.started(_start("cut"))
    assert box.active_segment.stat().st_size == size  # truncated back to the last whole line
    layer.free()
    box.started(_start("after"))
    box.finished(_event("after"))
    _assert_every_line_parses(box)
    assert b'"cut"' not in box.active_segment.read_bytes()
    box.close()


async def test_a_partial_line_that_cannot_be_truncated_stays_a_line_of_its_own(
    layer: FaultLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "truncate refused")

    box = _outbox(layer)
    monkeypatch.setattr(disk_module.os, "ftruncate", refuse)
    layer.accept_then_full = 40
    with pytest.raises(OutboxUnavailable):
        box.started(_start("cut"))
    monkeypatch.undo()
    layer.free()
    box.started(_start("after"))
    box.finished(_event("after"))
    data = box.active_segment.read_bytes()
    assert data.count(b"\n") == 3  # fragment + newline, then two whole lines: nothing glued onto the fragment
    ledger = MemoryLedger()
    assert await Flusher(box, ledger).flush_once() == 1 and list(ledger.rows) == ["after"]
    box.close()


async def test_an_fsync_failure_refuses_starts_until_a_good_fsync(
    layer: FaultLayer, caplog: pytest.LogCaptureFixture
) -> None:
    box = _outbox(layer, fsync_interval=0.1)  # a periodic fsync keeps what it covers for a re-write
    box.started(_start("open"))
    box.started(_start("done"))
    box.finished(_event("done"))
    layer.fsync_fails = True
    with caplog.at_level(logging.ERROR, logger="fleetgate.metering.outbox"):
        assert not await box.sync()
        await box.tick()  # still failing: the new segment's fsync fails too
    assert box.refusal_reason == "fsync_failed"
    with pytest.raises(OutboxUnavailable):
        box.started(_start("refused"))
    assert box.fsync_failures >= 2
    assert len([r for r in caplog.records if "fsync failed" in r.getMessage()]) == 1  # once per episode
    first = box.active_segment
    layer.fsync_fails = False
    await box.tick()
    assert box.accepting
    # Linux may have dropped what the failed fsync covered: the finish and the open start were re-written.
    assert box.active_segment != first
    rewritten = box.active_segment.read_bytes()
    assert b'"event_id":"done"' in rewritten and b'"id":"open"' in rewritten
    box.started(_start("next"))
    ledger = MemoryLedger()
    await Flusher(box, ledger).flush_once()
    assert list(ledger.rows) == ["done"]  # delivered twice at most, counted once (keyed by event_id)
    box.close()


async def test_over_the_disk_budget_starts_are_refused_and_finishes_accepted(layer: FaultLayer) -> None:
    box = _outbox(layer, segment_bytes=4096, max_bytes=8192, disk_check_interval=0)
    ledger = MemoryLedger()
    flusher = Flusher(box, ledger)
    ledger.down = True  # the ledger is behind: nothing can be deleted
    served = []
    for i in range(100):
        try:
            box.started(_start(f"r{i}"))
        except OutboxUnavailable as refused:
            assert refused.reason == "disk_budget" and refused.retry_after > 0
            break
        box.started(_start(f"long{i}"))
        served.append(f"r{i}")
        box.finished(_event(f"r{i}"))
    else:
        raise AssertionError("the budget never refused a start")
    assert box.refused == {"disk_budget": 1}
    box.finished(_event("long0"))  # a request in flight still finishes, over budget
    assert box.pending_lines == 0
    ledger.down = False
    flusher.consumers[0].retry_at = 0
    await flusher.flush_once()  # delivers, deletes rotated segments, measures the directory again
    assert set(served) | {"long0"} <= set(ledger.rows)
    assert box.accepting
    box.close()


def test_below_the_free_space_floor_starts_are_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", fsync_interval=0, min_free_bytes=1 << 62, disk_check_interval=0)
    box.open()
    with pytest.raises(OutboxUnavailable) as refused:
        box.started(_start("a"))
    assert refused.value.reason == "disk_free" and box.refusal_reason == "disk_free"
    box.finished(_event("in-flight"))  # finishes still go through
    assert box.pending_lines == 0 and b'"in-flight"' in box.active_segment.read_bytes()
    box.close()


def test_rotation_on_a_full_disk_keeps_writing_the_old_segment(layer: FaultLayer) -> None:
    box = _outbox(layer, segment_bytes=2048)
    box.started(_start("long-running"))
    while box.active_segment.stat().st_size < 1500:
        box.started(_start(f"s{box.appended}"))
        box.finished(_event(f"s{box.appended}"))
    real_write = layer.write
    calls = 0

    def refuse_the_second_segment(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the line that reaches the threshold lands; copying the open starts forward does not
            raise OSError(errno.ENOSPC, "full")
        return real_write(fd, data)

    box.os_write = refuse_the_second_segment
    box.finished(_event("big"))
    box.finished(_event("big2"))
    assert box.seq == 0 and len(list(box.directory.glob("*.log"))) == 1  # no half-made segment left behind
    box.os_write = real_write
    box._rotate_at = 0  # skip the one-second wait between rotation attempts
    box.retry_pending()
    assert box.seq == 1 and b'"long-running"' in box.active_segment.read_bytes()
    box.close()


def test_kept_records_are_bounded_but_billable_ones_are_never_dropped(layer: FaultLayer) -> None:
    box = _outbox(layer, max_pending=3)
    box.started(_start("open"))
    layer.fill()
    for i in range(10):
        box.finished(_rejected(f"x{i}"))
    box.finished(_event("open"))
    box.finished(_event("recovered-lost"))  # no start here (a dead gateway's request): it bills, so it is kept
    assert box.pending_lines == 5 and box.dropped_lines == 7
    layer.free()
    assert box.retry_pending()
    data = box.active_segment.read_bytes()
    assert b'"open"' in data and b'"recovered-lost"' in data
    box.close()


async def test_a_stop_with_kept_records_leaves_their_starts_to_be_billed(
    layer: FaultLayer, caplog: pytest.LogCaptureFixture
) -> None:
    box = _outbox(layer)
    box.started(_start("served"))
    layer.fill()
    box.finished(_event("served"))
    with caplog.at_level(logging.ERROR, logger="fleetgate.metering.outbox"):
        box.close()  # the disk is still full: the finish cannot be written, its start is on disk
    assert any("could not be written before shutdown" in r.getMessage() for r in caplog.records)
    layer.free()
    survivor = Outbox(box.directory, fsync_interval=0)
    survivor.open()
    ledger = MemoryLedger()
    flusher = Flusher(survivor, ledger)
    await flusher.flush_once()
    await flusher.flush_once()
    assert ledger.rows["served"].status == "gateway_lost"  # billed from its start, not lost
    survivor.close()


def _rejected(rid: str) -> UsageEvent:
    return replace(_event(rid), status="rejected", prompt_tokens=0, cached_tokens=0, completion_tokens=0)
