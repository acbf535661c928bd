"""Periodic loops: steady start-to-start runs, a floor on the pause, an optional first wait, a clean stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fleetgate.domain import background
from fleetgate.domain.background import MIN_PAUSE, Periodic


class FakeClock:
    """A clock the work advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every pause the loop asks for, instead of sleeping it (so the test runs on the fake clock alone)."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(background.asyncio, "sleep", sleep)
    return asked


def _counting(clock: FakeClock, took: float, runs: int) -> tuple[Callable[[], Awaitable[None]], asyncio.Event]:
    done = asyncio.Event()
    count = 0

    async def work() -> None:
        nonlocal count
        clock.now += took
        count += 1
        if count == runs:
            done.set()

    return work, done


async def test_runs_start_interval_apart_and_a_slow_run_still_pauses(pauses: list[float]) -> None:
    clock = FakeClock()
    work, done = _counting(clock, took=0.25, runs=3)
    loop = Periodic("test-periodic", work, 1.0, clock=clock)
    loop.start()
    await asyncio.wait_for(done.wait(), 10)
    await loop.stop()
    assert pauses[:2] == [0.75, 0.75]  # start to start: the interval less what the run took
    assert not loop.running
    slow_clock = FakeClock()
    slow_work, slow_done = _counting(slow_clock, took=5.0, runs=2)
    slow = Periodic("test-slow", slow_work, 1.0, clock=slow_clock)
    slow.start()
    await asyncio.wait_for(slow_done.wait(), 10)
    await slow.stop()
    assert pauses[-1] == MIN_PAUSE  # a run longer than the interval is never followed by a busy loop


async def test_wait_first_waits_one_interval_before_the_first_run(pauses: list[float]) -> None:
    clock = FakeClock()
    work, done = _counting(clock, took=0.0, runs=1)
    loop = Periodic("test-wait-first", work, 30.0, wait_first=True, clock=clock)
    loop.start()
    loop.start()  # a second start does not start a second loop
    await asyncio.wait_for(done.wait(), 10)
    await loop.stop()
    assert pauses[0] == 30.0


async def test_stop_ends_the_loop_and_a_stopped_loop_can_stop_again() -> None:
    runs = asyncio.Event()

    async def work() -> None:
        runs.set()

    loop = Periodic("test-stop", work, 60.0)
    loop.start()
    await asyncio.wait_for(runs.wait(), 10)  # the first run comes at once
    assert loop.running
    await loop.stop()
    assert not loop.running
    await loop.stop()
