"""Tenant plane and outbox cost per request, in-process: auth + policy + limits (in-process, Redis), outbox, capture.

Run from the repo root: `.venv/bin/python bench/gate_micro.py` (about a minute), or `--quick` for a smoke test.
The Redis rows need a Redis on 127.0.0.1:6379 (`--redis-url`); without one they show n/a. Everything runs in this
one process on uvloop, against a real TenantStore on a temporary SQLite file and a real outbox directory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import plots
from fleetgate.config import GatewayConfig, MeteringConfig, PricesConfig, TenancyConfig
from fleetgate.domain.ids import request_id
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.events import UsageEvent
from fleetgate.metering.outbox import Outbox, StartRecord
from fleetgate.serving.outcome import RequestOutcome
from fleetgate.tenancy.auth import TenantAuthenticator
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.limits.base import Limiter
from fleetgate.tenancy.limits.factory import make_limiter
from fleetgate.tenancy.limits.redis import DEFAULT_PREFIX
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from procs import cpu_seconds, machine_busy_seconds
from report import DEFAULT_DOCS, command_line, machine_info, machine_line, update_docs

SECTION = "## Tenant plane and outbox cost (bench/gate_micro.py)"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "bench-gate-micro"
# A model with a price in the default price book, so the budget counter really moves.
MODEL = "smollm2"
BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
)
USAGE = {"prompt_tokens": 14, "completion_tokens": 16, "total_tokens": 30}
# Limits high enough never to refuse at any rate this machine reaches, yet all four are checked on every request.
LIMITS = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrency": 100_000, "budget": 1_000_000_000.0}

# Goals from the tracker (the verdict lines of the report).
MAX_GATE_MEMORY_P50_US = 200.0
MAX_GATE_REDIS_P50_US = 1000.0
MAX_OUTBOX_P50_US = 300.0

SCENARIOS = ("gate-memory", "gate-redis", "outbox", "capture")
TITLES = {
    "gate-memory": "tenant plane, in-process limits",
    "gate-redis": "tenant plane, Redis limits",
    "outbox": "outbox",
    "capture": "usage capture (what the proxy calls)",
}
PHASES = {
    "gate-memory": ("authenticate", "admit", "settle"),
    "gate-redis": ("authenticate", "admit", "settle"),
    "outbox": ("started", "finished"),
    "capture": ("begin", "finish"),
}
TOTAL_LABEL = {
    "gate-memory": "authenticate + admit + settle",
    "gate-redis": "authenticate + admit + settle",
    "outbox": "Outbox.started + Outbox.finished",
    "capture": "measured() + begin, measured() + finish",
}

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

# One timed request: returns the nanoseconds of each phase, in PHASES order.
Step = Callable[[], Awaitable[tuple[int, ...]]]


@dataclass
class Settings:
    """What one run does, from the command line."""

    rounds: int
    requests: int
    warmup: int
    scenarios: list[str]
    redis_url: str
    directory: Path | None
    json_path: Path | None
    docs_path: Path | None
    command: str
    plot_from: Path | None = None


@dataclass
class Series:
    """Every sample (ns) of one scenario, per phase and in total, plus the p50 of each round."""

    phases: dict[str, list[int]] = field(default_factory=dict)
    total: list[int] = field(default_factory=list)
    round_p50_ns: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # timed stretches only
    cpu_s: float = 0.0  # this process (all its threads) meanwhile
    other_cpu_s: float = 0.0  # every other process except the Redis server, meanwhile


@dataclass
class Run:
    """Everything measured, plus the facts the report needs."""

    settings: Settings
    meta: dict[str, Any]
    series: dict[str, Series] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # scenario -> why it shows n/a
    checks: dict[str, str] = field(default_factory=dict)  # what was verified about the setup


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options; `--quick` is a 2-round smoke test that leaves the docs alone."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="rounds over all scenarios, interleaved (default 10)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per scenario and round (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests before each (default 200)")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"Redis for the Redis rows ({DEFAULT_REDIS_URL})")
    p.add_argument("--dir", type=Path, default=None, help="where the temporary SQLite file and outbox go")
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write raw numbers to this JSON file")
    p.add_argument("--docs", type=Path, default=None, help=f"Markdown file to update (default {DEFAULT_DOCS})")
    p.add_argument("--no-docs", action="store_true", help="do not update the Markdown file")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds of 300 requests, no docs")
    p.add_argument(
        "--plot-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="only redraw the plot and its docs link from a --json result",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.requests, a.warmup = 2, 300, 50
    scenarios = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown or not scenarios:
        p.error(f"--only takes a comma-separated subset of {','.join(SCENARIOS)}, not {a.only!r}")
    if a.rounds < 1 or a.requests < 1 or a.warmup < 0:
        p.error("--rounds and --requests must be positive, --warmup not negative")
    docs: Path | None = a.docs or DEFAULT_DOCS
    # A smoke test or a partial run must not overwrite the full numbers.
    if a.no_docs or (a.docs is None and a.plot_from is None and (a.quick or set(scenarios) != set(SCENARIOS))):
        docs = None
    return Settings(
        rounds=a.rounds,
        requests=a.requests,
        warmup=a.warmup,
        scenarios=[s for s in SCENARIOS if s in scenarios],
        redis_url=a.redis_url,
        directory=a.dir,
        json_path=a.json_path,
        docs_path=docs,
        command=command_line(),
        plot_from=a.plot_from,
    )


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
        start = StartRecord(
            id=rid,
            tenant_id=tenant_id,
            key_id=key_id,
            model=MODEL,
            adapter=None,
            replica_id="engine-0",
            engine="openai",
            gpu_type="unknown",
            started_at=now,
            stream=False,
            endpoint="chat",
            est_prompt_tokens=14,
        )
        event = UsageEvent(
            event_id=rid,
            tenant_id=tenant_id,
            key_id=key_id,
            model=MODEL,
            adapter=None,
            replica_id="engine-0",
            engine="openai",
            gpu_type="unknown",
            started_at=now,
            first_token_at=now,
            ended_at=now,
            prompt_tokens=USAGE["prompt_tokens"],
            cached_tokens=0,
            completion_tokens=USAGE["completion_tokens"],
            status="ok",
            usage_source="engine",
            stream=False,
            endpoint="chat",
            http_status=200,
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


def cpu_probe(redis_pid: int | None) -> tuple[float, float, float, float]:
    """(wall, this process's CPU, the Redis server's CPU, the machine's busy CPU), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    server = cpu_seconds({"redis": redis_pid})["redis"] if redis_pid else 0.0
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, server, machine_busy_seconds()


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


async def redis_problem(url: str) -> str | None:
    """Why Redis cannot be used for the Redis rows, or None."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return f"Redis at {url} unreachable ({type(exc).__name__})"
    finally:
        await client.aclose()
    return None


async def redis_server_info(url: str) -> dict[str, Any]:
    """Redis version and process id (for the report)."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {"redis_version": info.get("redis_version"), "redis_pid": info.get("process_id")}


async def drop_redis_keys(url: str, tenant_id: str) -> int:
    """Delete this run's limiter keys (its tenant id is fresh, so nothing else matches); return how many."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        keys = [k async for k in client.scan_iter(match=f"{DEFAULT_PREFIX}{{{tenant_id}}}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


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


async def measure(run: Run, workdir: Path) -> None:
    """Set up the tenant plane and the outbox as the gateway does, then time the scenarios round by round."""
    s = run.settings
    metering, tenancy = MeteringConfig(), TenancyConfig()
    store = await TenantStore.open(f"sqlite:///{workdir / 'fleetgate.db'}")
    limiters: list[Limiter] = []
    auth = TenantAuthenticator(store, tenancy.poll_interval)
    outbox = Outbox(workdir / "outbox", metering.segment_bytes, metering.fsync_interval)
    capture = UsageCapture(outbox, EngineClient(GatewayConfig()), metering.tokenize_after)
    tenant_id = ""
    try:
        spec = TenantSpec(
            external_id=TENANT,
            name="gate_micro benchmark",
            rpm=int(LIMITS["rpm"]),
            tpm=int(LIMITS["tpm"]),
            max_concurrency=int(LIMITS["max_concurrency"]),
            budget=LIMITS["budget"],
            models=["*"],
        )
        tenant, _ = await store.upsert_tenant(spec)
        tenant_id = tenant.id
        key, info = await store.create_key(TENANT, name="gate_micro")
        authorization = f"Bearer {key}".encode()
        await auth.start()  # polls the store's revision every poll_interval, as in the gateway
        outbox.open()
        outbox.start_fsync()
        capture.start()
        prices = PricesConfig()
        steps: dict[str, Step] = {}
        if "gate-memory" in s.scenarios:
            limiter = make_limiter("memory", None, "fail_open")
            limiters.append(limiter)
            gate = TenantGate(auth, limiter, prices)
            run.checks["gate-memory"] = await check_limits_exercised(gate, authorization)
            steps["gate-memory"] = gate_step(gate, authorization)
        if "gate-redis" in s.scenarios:
            problem = await redis_problem(s.redis_url)
            if problem is not None:
                run.notes["gate-redis"] = problem
                console.print(f"[yellow]{escape(problem)}: the Redis rows show n/a[/]")
            else:
                run.meta.update(await redis_server_info(s.redis_url))
                limiter = make_limiter("redis", s.redis_url, "fail_closed")
                limiters.append(limiter)
                gate = TenantGate(auth, limiter, prices)
                run.checks["gate-redis"] = await check_limits_exercised(gate, authorization)
                steps["gate-redis"] = gate_step(gate, authorization)
        if "outbox" in s.scenarios:
            steps["outbox"] = outbox_step(outbox, tenant_id, info.id)
        if "capture" in s.scenarios:
            replica = Replica(id="engine-0", url="http://127.0.0.1:9", models={MODEL}, healthy=True)
            steps["capture"] = capture_step(capture, replica, tenant_id, info.id)
        for name, check in run.checks.items():
            console.print(f"{name}: limits counted ({check})")

        # The gateway's collector settings after start-up (see fleetgate.local.stack): same allocation pauses as there.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 100)
        names = list(steps)
        appended0 = outbox.appended
        for rnd in range(s.rounds):
            # Rotate who goes first, so no scenario always runs right after another one's allocations.
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                series = run.series.setdefault(name, Series())
                await run_round(steps[name], series, PHASES[name], s.requests, s.warmup, run.meta.get("redis_pid"))
            console.print(
                f"  round {rnd + 1}/{s.rounds}: "
                + "  ".join(f"{n} p50 {run.series[n].round_p50_ns[-1] / 1e3:.1f} µs" for n in names)
            )
        appends = outbox.appended - appended0
        per_round = sum(2 * (s.requests + s.warmup) for n in names if n in ("outbox", "capture"))
        run.checks["outbox"] = f"{appends} records appended (expected {per_round * s.rounds}), segment seq {outbox.seq}"
        if appends != per_round * s.rounds:
            raise RuntimeError(f"the outbox appended {appends} records, expected {per_round * s.rounds}")
    finally:
        await capture.stop()
        outbox.close()
        await auth.stop()
        for limiter in limiters:
            await limiter.close()
        if tenant_id and "gate-redis" in s.scenarios and "gate-redis" not in run.notes:
            dropped = await drop_redis_keys(s.redis_url, tenant_id)
            console.print(f"removed this run's {dropped} limiter keys from Redis")
        await store.close()


def pct(samples: list[int], q: float) -> float:
    """The q-th percentile (0-100) of nanosecond samples, in microseconds (nearest rank on the sorted list)."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index] / 1e3


def summarise(run: Run) -> list[dict[str, Any]]:
    """One row per scenario total and per phase: p50, p99, p99.9, mean, the range of per-round p50s."""
    rows: list[dict[str, Any]] = []
    for name in run.settings.scenarios:
        series = run.series.get(name)
        if series is None or not series.total:
            rows.append({"scenario": name, "what": TOTAL_LABEL[name], "phase": None, "na": run.notes.get(name)})
            continue
        parts: list[tuple[str | None, list[int]]] = [(None, series.total)]
        parts += [(p, series.phases[p]) for p in PHASES[name]]
        for phase, samples in parts:
            row: dict[str, Any] = {
                "scenario": name,
                "what": TOTAL_LABEL[name] if phase is None else phase,
                "phase": phase,
                "samples": len(samples),
                "p50_us": pct(samples, 50),
                "p99_us": pct(samples, 99),
                "p999_us": pct(samples, 99.9),
                "mean_us": statistics.fmean(samples) / 1e3,
            }
            if phase is None:
                row["round_p50_min_us"] = min(series.round_p50_ns) / 1e3
                row["round_p50_max_us"] = max(series.round_p50_ns) / 1e3
                row["cpu_us_per_req"] = series.cpu_s / len(samples) * 1e6
                row["other_cpu_share"] = series.other_cpu_s / series.wall_s if series.wall_s else None
            rows.append(row)
    return rows


@dataclass
class Verdict:
    """One goal, what was measured against it, and whether it was met (None: could not be measured)."""

    goal: str
    measured: str
    ok: bool | None

    def line(self, markdown: bool = False) -> str:
        """`PASS|FAIL|n/a goal: measured`."""
        word = {True: "PASS", False: "FAIL", None: "n/a"}[self.ok]
        return f"{f'**{word}**' if markdown else word} {self.goal}: {self.measured}"


def verdicts(rows: list[dict[str, Any]], run: Run) -> list[Verdict]:
    """Check the p50s against the tracker's targets."""
    total = {r["scenario"]: r for r in rows if r["phase"] is None}

    def p50(name: str) -> float | None:
        row = total.get(name)
        return None if row is None or "p50_us" not in row else float(row["p50_us"])

    def check(goal: str, name: str, limit: float, extra: str = "") -> Verdict:
        value = p50(name)
        if value is None:
            why = run.notes.get(name, "not run")
            return Verdict(goal, f"n/a ({why})", None)
        return Verdict(goal, f"{value:.1f} µs p50 ({total[name]['p99_us']:.1f} µs p99){extra}", value <= limit)

    capture = p50("capture")
    return [
        check(
            f"auth + policy + limits <= {MAX_GATE_MEMORY_P50_US / 1e3:g} ms p50 in-process",
            "gate-memory",
            MAX_GATE_MEMORY_P50_US,
        ),
        check(
            f"auth + policy + limits <= {MAX_GATE_REDIS_P50_US / 1e3:g} ms p50 with Redis",
            "gate-redis",
            MAX_GATE_REDIS_P50_US,
        ),
        check(
            f"outbox append <= {MAX_OUTBOX_P50_US / 1e3:g} ms p50 (both appends of a request together)",
            "outbox",
            MAX_OUTBOX_P50_US,
            "" if capture is None else f"; with building the records (usage capture) {capture:.1f} µs p50",
        ),
    ]


def _fmt(row: dict[str, Any], key: str, spec: str = ".1f") -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


COLUMNS = (
    "scenario",
    "timed",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "mean µs",
    "round p50s µs",
    "CPU µs/req",
    "other CPU",
    "samples",
)


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Rows of the report table: each scenario's total, then its phases indented."""
    out: list[tuple[str, ...]] = []
    for row in rows:
        if row.get("na"):
            out.append((TITLES[row["scenario"]], row["what"], "n/a", *("-",) * (len(COLUMNS) - 3)))
            continue
        first = row["phase"] is None
        spread = f"{row['round_p50_min_us']:.1f}-{row['round_p50_max_us']:.1f}" if first else ""
        out.append(
            (
                TITLES[row["scenario"]] if first else "",
                row["what"] if first else f"↳ {row['what']}",
                _fmt(row, "p50_us"),
                _fmt(row, "p99_us"),
                _fmt(row, "p999_us"),
                _fmt(row, "mean_us"),
                spread,
                _fmt(row, "cpu_us_per_req") if first else "",
                _fmt(row, "other_cpu_share", ".0%") if first else "",
                str(row["samples"]) if first else "",
            )
        )
    return out


def print_report(run: Run, rows: list[dict[str, Any]], checks: list[Verdict]) -> None:
    """The Rich table and the verdicts."""
    table = Table(title="Tenant plane and outbox cost per request", header_style="bold")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("scenario", "timed") else "right")
    for r in table_rows(rows):
        table.add_row(*r)
    console.print(table)
    for v in checks:
        colour = {True: "green", False: "red", None: "yellow"}[v.ok]
        console.print(f"[{colour}]{escape(v.line())}[/]")


def markdown_section(run: Run, rows: list[dict[str, Any]], checks: list[Verdict]) -> str:
    """The docs section: machine, command, setup, table, verdicts."""
    s, m = run.settings, run.meta
    metering, tenancy = MeteringConfig(), TenancyConfig()
    redis = (
        f"Redis {m['redis_version']} on 127.0.0.1, shared with the machine's other users"
        if m.get("redis_version")
        else "no Redis"
    )
    lines = [
        SECTION,
        "",
        machine_line(m),
        "",
        f"Command: `{s.command}`",
        "",
        "Setup: one process on uvloop, no HTTP: the calls the proxy makes per request, timed with "
        "`perf_counter_ns`. A real `TenantStore` on a temporary SQLite file (WAL) holds one tenant with "
        f"rpm {LIMITS['rpm']:,}, tpm {LIMITS['tpm']:,}, max_concurrency {LIMITS['max_concurrency']:,} and a budget "
        f"of {LIMITS['budget']:,.0f} a month (never refusing, but every limit is checked and counted: verified "
        'before timing by reading the limiter\'s counters mid-request), `models: ["*"]`, and one key; the key '
        f"cache polls the store's revision every {tenancy.poll_interval:g} s as in the gateway. The model "
        f"(`{MODEL}`) has a price, so the budget counter really moves. Tenant plane = `TenantGate.authenticate` "
        "(cached key) + `admit` (model check, policy, token estimate, price, limiter reserve) + `settle` (inline for "
        "the in-process limiter, whose settle never suspends; in its own shielded task for Redis; as in the "
        'gateway), with `make_limiter("memory", ...)` and with '
        f'`make_limiter("redis", "{s.redis_url}", "fail_closed")` ({redis}; a Redis error would abort the run, '
        "so no number here comes from the in-process fallback). Outbox = `Outbox.started` + `Outbox.finished` "
        f"with records built beforehand (untimed), in a temporary directory on {m.get('workdir_fs', '?')}, default "
        f"segment size ({metering.segment_bytes >> 20} MiB) and fsync every {metering.fsync_interval:g} s in a "
        "worker thread. Usage capture = `capture.begin(outcome.measured(), ...)` + `capture.finish("
        "outcome.measured())` with the engine's usage present, i.e. the outbox appends plus building the "
        "records, as the proxy calls them. "
        f"{s.rounds} rounds; in each, every scenario runs {s.warmup} untimed then {s.requests} timed requests, "
        "in an order that rotates by round; the loop yields once between requests (so the fsync and polling "
        "tasks run, as they would between requests in the gateway). The collector runs with the gateway's "
        "settings (`gc.freeze()`, threshold 20000). Percentiles pool all rounds; `round p50s` is the range of "
        "the per-round medians (drift and noise). `CPU µs/req` is this process's CPU time (all its threads, the "
        "fsync worker and the SQLite thread included) over the timed stretches divided by the requests; it "
        "includes a few µs of untimed per-request set-up (parsing the body, building records), and for Redis "
        "only the client side. `other CPU` is what every other process except the Redis server used meanwhile "
        "(busy time from /proc/stat), as a share of one core: the noise the numbers were taken under.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" if c in ("scenario", "timed") else "---:" for c in COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    lines.append("")
    for name, why in run.notes.items():
        lines += [f"{TITLES[name]}: n/a ({why}).", ""]
    lines += [f"- {v.line(markdown=True)}" for v in checks]
    lines.append("")
    return "\n".join(lines)


def dump_json(path: Path, run: Run, rows: list[dict[str, Any]], checks: list[Verdict]) -> None:
    """Summaries, per-round p50s and verdicts (not the raw samples)."""
    data = {
        "meta": run.meta,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(run.settings).items()},
        "notes": run.notes,
        "checks": run.checks,
        "rows": rows,
        "round_p50_us": {n: [x / 1e3 for x in s.round_p50_ns] for n, s in run.series.items()},
        "verdicts": [{"goal": v.goal, "measured": v.measured, "ok": v.ok} for v in checks],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, report, and leave nothing behind (temporary files, Redis keys)."""
    settings = parse_args(argv)
    if settings.plot_from is not None:
        console.print(escape(publish_plot(plots.load(settings.plot_from), settings.docs_path)))
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run = Run(settings, machine_info(("redis", "uvloop", "sqlalchemy", "aiosqlite", "orjson")))
    if settings.directory is not None:
        settings.directory.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-gate-micro-", dir=settings.directory))
    run.meta["workdir_fs"] = _filesystem(workdir)
    console.print(
        f"{settings.rounds} rounds x {len(settings.scenarios)} scenarios x {settings.requests} requests "
        f"(+{settings.warmup} warm-up) in {workdir} ({run.meta['workdir_fs']})"
    )
    try:
        import uvloop

        uvloop.run(measure(run, workdir))
    except RuntimeError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.meta["loadavg_end"] = os.getloadavg()
    rows = summarise(run)
    checks = verdicts(rows, run)
    print_report(run, rows, checks)
    if settings.json_path is not None:
        dump_json(settings.json_path, run, rows, checks)
        console.print(f"raw numbers: {settings.json_path}")
    if settings.docs_path is not None:
        update_docs(settings.docs_path, SECTION, markdown_section(run, rows, checks))
        console.print(f"updated {settings.docs_path}")
        data = {"meta": run.meta, "settings": vars(settings), "rows": rows}
        console.print(escape(publish_plot(data, settings.docs_path)))
    return 0


def publish_plot(data: dict[str, Any], docs: Path | None) -> str:
    """plots/gate_micro.png next to the docs (linked below this section's table); without docs, in docs/plots/."""
    return plots.publish(
        "gate_micro",
        lambda d: plots.gate_micro_figure(d, TITLES),
        data,
        docs or DEFAULT_DOCS,
        SECTION,
        "Tenant plane and outbox: p50 and p99 µs per scenario and phase",
        link=docs is not None,
    )


def _filesystem(path: Path) -> str:
    """The filesystem type `path` lives on (fsync and write costs depend on it), from /proc/mounts."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


if __name__ == "__main__":
    sys.exit(main())
