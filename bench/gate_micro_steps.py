"""What bench/gate_micro.py times: one request's calls into the tenant plane, the outbox and usage capture, each
split into its phases (nanoseconds), and a round of them."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fleetgate.domain.ids import request_id
from fleetgate.domain.usage import Usage
from fleetgate.fleet.replicas import Replica
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.outbox import Outbox, StartRecord
from fleetgate.serving.outcome import RequestOutcome
from fleetgate.tenancy.gate import TenantGate
from harness.usage import snapshot

TENANT = "bench-gate-micro"
# A model with a price in the default price book, so the budget counter really moves.
MODEL = "smollm2"
BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
)
USAGE = Usage(prompt=14, cached=0, completion=16)  # as the relay reads an engine's usage block
# Limits high enough never to refuse at any rate this machine reaches, yet all four are checked on every request
# (tpm at most the store's INT32 bound, as the admin API enforces since issue 17).
LIMITS = {"rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrency": 100_000, "budget": 1_000_000_000.0}

# One timed request: returns the nanoseconds of each phase, in PHASES order.
Step = Callable[[], Awaitable[tuple[int, ...]]]


@dataclass
class Series:
    """Every sample (ns) of one scenario, per phase and in total, plus the p50 of each round."""

    phases: dict[str, list[int]] = field(default_factory=dict)
    total: list[int] = field(default_factory=list)
    round_p50_ns: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # timed stretches only
    cpu_s: float = 0.0  # this process (all its threads) meanwhile
    other_cpu_s: float = 0.0  # every other process except the Redis server, meanwhile


def gate_step(gate: TenantGate, authorization: bytes) -> Step:
    """One request through the tenant plane: authenticate (cached key), admit (policy + reserve), settle."""
    clock = time.perf_counter_ns

    async def step() -> tuple[int, ...]:
        payload = orjson.loads(BODY)  # a fresh body each time: the policy may clamp it in place
        rid = request_id()
        t0 = clock()
        principal = await gate.authenticate(authorization)
        t1 = clock()
        admission = await gate.admit(principal, payload, rid)
        t2 = clock()
        await gate.settle(admission, USAGE, 0)
        t3 = clock()
        return t1 - t0, t2 - t1, t3 - t2

    return step


def outbox_step(outbox: Outbox, tenant_id: str, key_id: str) -> Step:
    """The two appends of one request: its start record and its finish record (built untimed)."""
    clock = time.perf_counter_ns

    async def step() -> tuple[int, ...]:
        rid = request_id()
        now = time.time()
        # What the start and the finish record of one request have in common.
        same: dict[str, Any] = {
            "tenant_id": tenant_id,
            "key_id": key_id,
            "model": MODEL,
            "adapter": None,
            "replica_id": "engine-0",
            "engine": "openai",
            "gpu_type": "unknown",
            "started_at": now,
            "stream": False,
            "endpoint": "chat",
        }
        start = StartRecord(id=rid, est_prompt_tokens=14, **same)
        event = UsageEvent(
            event_id=rid,
            first_token_at=now,
            ended_at=now,
            prompt_tokens=USAGE.prompt,
            cached_tokens=0,
            completion_tokens=USAGE.completion,
            status="ok",
            usage_source="engine",
            http_status=200,
            **same,
        )
        t0 = clock()
        outbox.started(start)
        t1 = clock()
        outbox.finished(event)
        t2 = clock()
        return t1 - t0, t2 - t1

    return step


def capture_step(capture: UsageCapture, replica: Replica, tenant_id: str, key_id: str) -> Step:
    """Usage capture as the proxy calls it: `capture.begin(outcome.measured(), ...)`, then `finish(measured())`."""
    clock = time.perf_counter_ns

    async def step() -> tuple[int, ...]:
        payload = orjson.loads(BODY)
        outcome = RequestOutcome(
            request_id(), "chat", tenant_id=tenant_id, key_id=key_id, tenant_name=TENANT, model=MODEL
        )
        outcome.est_prompt_tokens = 14
        outcome.replica, outcome.attempts, outcome.begun = replica, 1, True
        t0 = clock()
        capture.begin(outcome.measured(), replica, payload)
        t1 = clock()
        # What the relay observed by the end (untimed), then the finish record with the engine's usage.
        outcome.usage, outcome.http_status, outcome.recorded = USAGE, 200, True
        t2 = clock()
        capture.finish(outcome.measured())
        t3 = clock()
        return t1 - t0, t3 - t2

    return step


async def check_limits_exercised(gate: TenantGate, authorization: bytes) -> str:
    """Admit one request and read the limiter's counters before settling: prove every limit is being counted."""
    principal = await gate.authenticate(authorization)
    tenant = principal.tenant
    admission = await gate.admit(principal, orjson.loads(BODY), request_id())
    during = await gate.limiter.counters(tenant.id, tenant.limits)
    await gate.settle(admission, USAGE, 0)
    after = await gate.limiter.counters(tenant.id, tenant.limits)
    counted = during.requests_available is not None and during.tokens_available is not None
    if not counted or during.in_flight != 1 or after.in_flight != 0 or after.spend_micros <= 0:
        raise RuntimeError(f"{gate.limiter.name} limiter did not count the request: {during} then {after}")
    return f"in flight 1 then 0 after settling, spend {after.spend_micros} micros in {after.period}"


def cpu_probe(redis_pid: int | None) -> tuple[float, float, float, float]:
    """(wall, this process's CPU, the Redis server's CPU, the machine's busy CPU), in seconds."""
    seen = snapshot({"redis": redis_pid} if redis_pid else {})
    return time.perf_counter(), seen["client"], seen.get("redis", 0.0), seen["machine"]


async def run_round(
    step: Step, series: Series, phases: Sequence[str], n: int, warmup: int, redis_pid: int | None
) -> None:
    """`warmup` untimed requests, then `n` timed ones; yield to the loop between requests (fsync, key polling)."""
    for _ in range(warmup):
        await step()
        await asyncio.sleep(0)
    totals: list[int] = []
    per_phase: list[list[int]] = [series.phases.setdefault(p, []) for p in phases]
    before = cpu_probe(redis_pid)
    for _ in range(n):
        times = await step()
        for bucket, t in zip(per_phase, times, strict=True):
            bucket.append(t)
        totals.append(sum(times))
        await asyncio.sleep(0)
    wall, cpu, server, machine = (b - a for a, b in zip(before, cpu_probe(redis_pid), strict=True))
    series.wall_s += wall
    series.cpu_s += cpu
    series.other_cpu_s += max(0.0, machine - cpu - server)
    series.total.extend(totals)
    series.round_p50_ns.append(statistics.median(totals))
