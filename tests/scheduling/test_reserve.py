"""The reserve: a model's last slots go only to tenants under their weighted share while others are active."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fleetgate.config import AdmissionConfig
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.scheduling.admission import AdmissionController, Slot
from fleetgate.scheduling.fair_queue import FairQueue, Ticket
from fleetgate.scheduling.reserve import ShareReserve, TenantShares

INTERACTIVE, STANDARD, BATCH = 0, 1, 2
BOUND = 2.0  # seconds: every wait in these tests is bounded


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _controller(capacity: int, clock: Callable[[], float], **cfg: Any) -> AdmissionController:
    registry = ReplicaRegistry(
        [Replica(id="r0", url="http://127.0.0.1:9000", models={"m"}, healthy=True)]  # one replica: capacity slots
    )
    config = AdmissionConfig.model_validate(
        {"max_in_flight_per_replica": capacity, "queue_timeout": {"interactive": 60, "standard": 60, "batch": 60}} | cfg
    )
    return AdmissionController(config, registry, clock)


async def _settle() -> None:
    """Let every task that can run take its steps (a granted waiter needs a few to return)."""
    for _ in range(4):
        await asyncio.sleep(0)


async def _now_or_queued(ctl: AdmissionController, tenant: str, priority: int = STANDARD) -> asyncio.Task[Slot]:
    """Start an acquire and let it run until it is admitted or waits in the queue."""
    task = asyncio.create_task(ctl.acquire("m", tenant, priority, 23, 1))
    await _settle()
    return task


def _cancel(tasks: list[asyncio.Task[Slot]]) -> None:
    for task in tasks:
        task.cancel()


def test_reserve_size() -> None:
    assert [ShareReserve(1, 0.05).reserved(c) for c in (0, 1, 2, 4, 20, 64, 1000)] == [0, 0, 1, 1, 1, 4, 50]
    assert ShareReserve(0, 0.0).reserved(64) == 0
    assert ShareReserve(8, 0.0).reserved(4) == 3  # one slot always stays open to anyone


async def test_noisy_tenant_leaves_the_reserve_and_a_quiet_arrival_starts_at_once() -> None:
    clock = Clock()
    ctl = _controller(4, clock)
    ctl.release(await ctl.acquire("m", "quiet", STANDARD, 23, 1))  # quiet was active a moment ago
    noisy = [await _now_or_queued(ctl, "noisy") for _ in range(8)]
    running = [t for t in noisy if t.done()]
    assert len(running) == 3 and ctl.admitted("m") == 3  # all but the reserve, although a slot is free
    clock.now += 1.0
    quiet = await _now_or_queued(ctl, "quiet")
    assert quiet.done() and quiet.result().waited == 0.0  # admitted at once, ahead of five queued noisy ones
    ctl.release(quiet.result())
    await _settle()
    assert ctl.admitted("m") == 3 and sum(t.done() for t in noisy) == 3  # its slot stays held for it
    ctl.release(running[0].result())
    await _settle()
    assert ctl.admitted("m") == 3 and sum(t.done() for t in noisy) == 4  # noisy refills up to the reserve
    _cancel(noisy)


async def test_a_tenant_alone_uses_every_slot() -> None:
    ctl = _controller(4, Clock())
    slots = [await asyncio.wait_for(ctl.acquire("m", "solo", STANDARD, 23, 1), BOUND) for _ in range(4)]
    assert ctl.admitted("m") == 4 and all(s.waited == 0.0 for s in slots)
    waiter = await _now_or_queued(ctl, "solo")
    assert not waiter.done()
    ctl.release(slots[0])
    assert (await asyncio.wait_for(waiter, BOUND)).waited >= 0.0 and ctl.admitted("m") == 4


async def test_the_reserve_is_released_when_the_other_tenant_went_quiet() -> None:
    clock = Clock()
    ctl = _controller(4, clock, tick_interval=0.01, active_window=10.0)
    ctl.release(await ctl.acquire("m", "quiet", STANDARD, 23, 1))
    noisy = [await _now_or_queued(ctl, "noisy") for _ in range(5)]
    assert sum(t.done() for t in noisy) == 3
    ctl.start()
    try:
        clock.now += 11.0  # quiet sent nothing for longer than the window
        async with asyncio.timeout(BOUND):
            while sum(t.done() for t in noisy) < 4:
                await asyncio.sleep(0.01)
        assert ctl.admitted("m") == 4
    finally:
        await ctl.stop()
        _cancel(noisy)


async def test_priorities_stay_strict() -> None:
    clock = Clock()
    ctl = _controller(4, clock)
    ctl.release(await ctl.acquire("m", "quiet", INTERACTIVE, 23, 1))  # the reserve is held for an interactive peer
    urgent = [await _now_or_queued(ctl, "urgent", INTERACTIVE) for _ in range(4)]
    assert sum(t.done() for t in urgent) == 3
    low = await _now_or_queued(ctl, "lowly", BATCH)
    assert not low.done()  # under its share, but a batch request never goes ahead of a waiting interactive one
    _cancel([*urgent, low])


async def test_a_lower_priority_tenant_holds_no_reserve_against_a_higher_one() -> None:
    ctl = _controller(4, Clock())
    ctl.release(await ctl.acquire("m", "lowly", BATCH, 23, 1))
    urgent = [await _now_or_queued(ctl, "urgent", INTERACTIVE) for _ in range(4)]
    assert all(t.done() for t in urgent) and ctl.admitted("m") == 4


async def test_reserve_off_is_plain_work_conserving() -> None:
    ctl = _controller(4, Clock(), reserve_slots=0, reserve_fraction=0.0)
    ctl.release(await ctl.acquire("m", "quiet", STANDARD, 23, 1))
    noisy = [await _now_or_queued(ctl, "noisy") for _ in range(5)]
    assert sum(t.done() for t in noisy) == 4
    _cancel(noisy)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(2, 8),
    reserve=st.integers(1, 3),
    ops=st.lists(st.sampled_from(["noisy", "noisy", "end-noisy", "quiet"]), min_size=1, max_size=60),
    weights=st.tuples(st.integers(1, 3), st.integers(1, 3)),
)
def test_quiet_arrival_is_never_queued_behind_a_noisy_tenant(
    capacity: int, reserve: int, ops: list[str], weights: tuple[int, int]
) -> None:
    """Whatever the noisy tenant does, the quiet one (one request at a time) always finds a slot."""
    noisy_w, quiet_w = weights
    assume(capacity * quiet_w >= noisy_w + quiet_w)  # the quiet tenant's share is at least one slot
    held = ShareReserve(reserve, 0.0).reserved(capacity)
    # noisy takes slots while below capacity - reserve, or while under its weighted share of the capacity
    limit = max(capacity - held, math.ceil(capacity * noisy_w / (noisy_w + quiet_w)))

    async def run() -> None:
        ctl = _controller(capacity, Clock(), reserve_slots=reserve, reserve_fraction=0.0)
        ctl.release(await ctl.acquire("m", "quiet", STANDARD, 23, quiet_w))
        tasks: list[asyncio.Task[Slot]] = []
        for op in ops:
            if op == "noisy":
                tasks.append(asyncio.create_task(ctl.acquire("m", "noisy", STANDARD, 23, noisy_w)))
            elif op == "end-noisy":
                done = [t for t in tasks if t.done() and not t.result().released]
                if done:
                    ctl.release(done[0].result())
            else:
                quiet = asyncio.create_task(ctl.acquire("m", "quiet", STANDARD, 23, quiet_w))
                await asyncio.sleep(0)  # admitted at once: done in its first step
                assert quiet.done() and quiet.result().waited == 0.0
                ctl.release(quiet.result())
            await _settle()
            running = sum(t.done() and not t.result().released for t in tasks)
            waiting = sum(not t.done() for t in tasks)
            assert running <= limit < capacity  # the noisy tenant never takes the quiet one's slot
            assert not waiting or running == limit  # and it gets everything up to there (work-conserving)
        _cancel(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 8), ops=st.lists(st.booleans(), min_size=1, max_size=60))
def test_a_tenant_alone_is_never_held_back(capacity: int, ops: list[bool]) -> None:
    """A tenant with no one else active waits only when every slot is taken."""

    async def run() -> None:
        ctl = _controller(capacity, Clock(), reserve_slots=3, reserve_fraction=0.5)
        tasks: list[asyncio.Task[Slot]] = []
        for arrive in ops:
            if arrive:
                tasks.append(asyncio.create_task(ctl.acquire("m", "solo", STANDARD, 23, 1)))
            else:
                done = [t for t in tasks if t.done() and not t.result().released]
                if done:
                    ctl.release(done[0].result())
            await _settle()
            running = sum(t.done() and not t.result().released for t in tasks)
            assert not any(not t.done() for t in tasks) or running == capacity
        _cancel(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def test_pop_passes_over_refused_tenants_but_never_to_a_lower_class() -> None:
    queue: FairQueue[int] = FairQueue(64)
    for n, (tenant, priority) in enumerate([("a", STANDARD), ("a", STANDARD), ("b", STANDARD), ("c", BATCH)]):
        queue.push(Ticket(tenant, priority, 23, 1, n))
    first = queue.pop(lambda t: t.tenant != "a")
    assert first is not None and first.tenant == "b"
    assert queue.pop(lambda t: t.tenant != "a") is None  # "c" is batch: it does not get what "a" was refused
    popped = queue.pop()
    assert popped is not None and popped.tenant == "a" and len(queue) == 2


def test_shares_count_peers_by_priority_and_forget_idle_tenants() -> None:
    shares = TenantShares(window=10.0, refresh_every=0.0)
    shares.arrived("a", INTERACTIVE, 2, 0.0)
    shares.arrived("b", STANDARD, 1, 0.0)
    shares.arrived("c", BATCH, 1, 0.0)
    assert [shares.weight_at(p, 1.0, ()) for p in (INTERACTIVE, STANDARD, BATCH)] == [2, 3, 4]
    shares.started("a", INTERACTIVE)
    assert shares.weight_at(BATCH, 20.0, [("c", BATCH)]) == 3  # b went quiet; c waits in the queue: demand
    assert shares.weight_at(BATCH, 29.0, ()) == 3  # c waited until 20.0
    assert shares.weight_at(BATCH, 31.0, ()) == 2  # c and b went quiet; a still runs a request
    shares.ended("a", INTERACTIVE, 31.0)
    for n in range(1000):
        shares.arrived(f"t{n}", STANDARD, 1, 32.0)
    assert len(shares) == 1001 and shares.weight_at(STANDARD, 32.0, ()) == 1002
    shares.refresh(50.0, ())
    assert len(shares) == 0 and shares.weight_at(BATCH, 50.0, ()) == 0


@pytest.mark.parametrize(("weight", "admitted"), [(1, 6), (3, 8)])
async def test_a_weighted_tenant_may_take_the_reserve_while_under_its_share(weight: int, admitted: int) -> None:
    # capacity 10, reserve 4: anyone gets 6; "big" of weight 3 (of 4 active) may go on to its share of 7.5
    ctl = _controller(10, Clock(), reserve_slots=4)
    ctl.release(await ctl.acquire("m", "small", STANDARD, 23, 1))
    tasks = [asyncio.create_task(ctl.acquire("m", "big", STANDARD, 23, weight)) for _ in range(10)]
    await _settle()
    assert sum(t.done() for t in tasks) == admitted
    _cancel(tasks)
