"""Admission control: capacity from real signals, fair waiting, deadlines, bounded queues, shedding."""

from __future__ import annotations

import asyncio
import time

import pytest

from fleetgate.config import AdmissionConfig
from fleetgate.domain.errors import InvalidRequest, Overloaded, RateLimited
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.scheduling.admission import AdmissionController
from tests.waiting import wait_until

STANDARD, BATCH, INTERACTIVE = 1, 2, 0


def _controller(per_replica: int = 1, replicas: int = 1, **cfg: object) -> AdmissionController:
    registry = ReplicaRegistry(
        Replica(id=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", models={"m"}, healthy=True) for i in range(replicas)
    )
    config = AdmissionConfig.model_validate({"max_in_flight_per_replica": per_replica, **cfg})
    return AdmissionController(config, registry)


async def test_fast_path_then_queue_then_handover() -> None:
    ctl = _controller(per_replica=1, replicas=2)
    a = await ctl.acquire("m", "t", STANDARD, 10, 1)
    b = await ctl.acquire("m", "t", STANDARD, 10, 1)
    waiter = asyncio.create_task(ctl.acquire("m", "t", STANDARD, 10, 1))
    await wait_until(lambda: ctl.depths() == {("m", "t", "standard"): 1}, what="the request to queue")
    assert not waiter.done()
    ctl.release(a)
    c = await asyncio.wait_for(waiter, 1)
    assert c.waited > 0 and ctl.admitted("m") == 2
    ctl.release(a)  # releasing twice is harmless
    ctl.release(b)
    ctl.release(c)
    assert ctl.admitted("m") == 0


async def test_deadline_gives_503_with_retry_after() -> None:
    ctl = _controller(queue_timeout={"interactive": 5, "standard": 0.2, "batch": 5})
    await ctl.acquire("m", "t", STANDARD, 10, 1)
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await ctl.acquire("m", "t", STANDARD, 10, 1)
    assert 0.15 < time.monotonic() - started < 2
    assert info.value.status == 503 and info.value.retry_after and info.value.retry_after >= 1
    assert ctl.depths() == {} and ctl.shed_counts() == {("m", "deadline"): 1}


async def test_client_deadline_can_only_shorten() -> None:
    ctl = _controller()
    await ctl.acquire("m", "t", STANDARD, 10, 1)
    started = time.monotonic()
    with pytest.raises(Overloaded):
        await ctl.acquire("m", "t", STANDARD, 10, 1, timeout=0.1)
    assert time.monotonic() - started < 10  # far below the 60 s default: the client's 0.1 s applied


async def test_full_queue_refuses_lowest_priority_first() -> None:
    ctl = _controller(max_queue=2)
    await ctl.acquire("m", "t", STANDARD, 10, 1)
    batch = asyncio.create_task(ctl.acquire("m", "b", BATCH, 10, 1))
    std = asyncio.create_task(ctl.acquire("m", "s", STANDARD, 10, 1))
    await asyncio.sleep(0.05)
    with pytest.raises(RateLimited, match="queue for `m` is full"):
        await ctl.acquire("m", "x", BATCH, 10, 1)  # no lower-priority request to push out
    urgent = asyncio.create_task(ctl.acquire("m", "i", INTERACTIVE, 10, 1))
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded, match="pushed out"):
        await batch  # the batch request made room for the interactive one
    with pytest.raises(RateLimited):
        await ctl.acquire("m", "s", STANDARD, 10, 1)  # "s" already holds its fair place: no pushing out "i"
    assert not std.done() and not urgent.done()
    for task in (std, urgent):
        task.cancel()


async def test_batch_is_shed_under_kv_pressure() -> None:
    ctl = _controller(per_replica=10)
    replica = ctl.registry.all()[0]
    replica.metrics = ReplicaMetrics(scraped_at=time.monotonic(), kv_usage=0.99)
    with pytest.raises(Overloaded, match="batch traffic is shed first"):
        await ctl.acquire("m", "t", BATCH, 10, 1)
    slot = await ctl.acquire("m", "t", STANDARD, 10, 1)  # interactive/standard still go through
    ctl.release(slot)
    replica.metrics = ReplicaMetrics(scraped_at=time.monotonic() - 60, kv_usage=0.99)  # stale: not trusted
    ctl.release(await ctl.acquire("m", "t", BATCH, 10, 1))


async def test_engine_queue_marks_replica_full() -> None:
    ctl = _controller(per_replica=4, replicas=2)
    busy = ctl.registry.all()[0]
    busy.metrics = ReplicaMetrics(scraped_at=time.monotonic(), waiting=20)  # other gateways filled it
    assert ctl.capacity("m") == 4
    ctl.registry.all()[1].healthy = False
    assert ctl.capacity("m") == 0


async def test_disconnect_while_queued_leaves_at_once() -> None:
    ctl = _controller()
    slot = await ctl.acquire("m", "t", STANDARD, 10, 1)
    waiter = asyncio.create_task(ctl.acquire("m", "t", STANDARD, 10, 1))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert ctl.depths() == {}
    ctl.release(slot)
    assert ctl.admitted("m") == 0  # the cancelled request never took the freed room


async def test_quiet_tenant_is_served_between_noisy_requests() -> None:
    ctl = _controller(quantum=100)
    holder = await ctl.acquire("m", "noisy", STANDARD, 100, 1)
    noisy = [asyncio.create_task(ctl.acquire("m", "noisy", STANDARD, 100, 1)) for _ in range(10)]
    await asyncio.sleep(0.01)
    quiet = asyncio.create_task(ctl.acquire("m", "quiet", STANDARD, 100, 1))
    await asyncio.sleep(0.01)
    order: list[str] = []
    current = holder
    for _ in range(3):
        ctl.release(current)
        await asyncio.sleep(0.01)
        done = [t for t in [*noisy, quiet] if t.done() and not getattr(t, "_seen", False)]
        assert len(done) == 1
        done[0]._seen = True  # type: ignore[attr-defined]
        order.append("quiet" if done[0] is quiet else "noisy")
        current = done[0].result()
    assert "quiet" in order[:2]  # served within one round despite ten noisy requests ahead of it
    for task in noisy:
        task.cancel()


def test_context_limit_is_400() -> None:
    ctl = _controller()
    ctl.registry.all()[0].context_len = 4096
    ctl.check_context("m", 1000, 1000)
    with pytest.raises(InvalidRequest, match="exceeds the context window of `m` \\(4096 tokens\\)"):
        ctl.check_context("m", 4000, 200)
