"""Tenant plane and outbox cost per request, in-process: auth + policy + limits (in-process, Redis), outbox, capture.

Run from the repo root: `.venv/bin/python bench/gate_micro.py` (about a minute), or `--quick` for a smoke test.
The Redis rows need a Redis on 127.0.0.1:6379 (`--redis-url`); without one they show n/a. Everything runs in this
one process on uvloop, against a real TenantStore on a temporary SQLite file and a real outbox directory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from rich.markup import escape

from fleetgate.config import GatewayConfig, MeteringConfig, PricesConfig, TenancyConfig
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica
from fleetgate.metering.capture import UsageCapture
from fleetgate.metering.outbox import Outbox
from fleetgate.tenancy.auth import TenantAuthenticator
from fleetgate.tenancy.gate import TenantGate
from fleetgate.tenancy.limits.factory import make_limiter
from fleetgate.tenancy.limits.redis import DEFAULT_PREFIX
from fleetgate.tenancy.models import TenantSpec
from fleetgate.tenancy.store import TenantStore
from gate_micro_report import (
    PHASES,
    PLOT,
    SCENARIOS,
    Run,
    Settings,
    json_data,
    markdown_section,
    print_report,
    summarise,
    verdicts,
)
from gate_micro_steps import (
    LIMITS,
    MODEL,
    TENANT,
    Series,
    Step,
    capture_step,
    check_limits_exercised,
    gate_step,
    outbox_step,
    run_round,
)
from harness import redis_keys, runner
from harness.plots import write_outputs
from harness.report import DEFAULT_DOCS, add_output_options, command_line, machine_info

console = runner.console()


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options; `--quick` is a 2-round smoke test that leaves the docs alone."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=10, help="rounds over all scenarios, interleaved (default 10)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per scenario and round (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests before each (default 200)")
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument(
        "--redis-url", default=redis_keys.DEFAULT_REDIS_URL, help="Redis for the Redis rows (default %(default)s)"
    )
    p.add_argument("--dir", type=Path, default=None, help="where the temporary SQLite file and outbox go")
    add_output_options(p)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds of 300 requests, no docs")
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


class Plane:
    """The tenant plane and the outbox as the gateway sets them up, on a store and outbox in `workdir`."""

    def __init__(self, store: TenantStore, workdir: Path) -> None:
        metering, tenancy = MeteringConfig(), TenancyConfig()
        self.store = store
        self.auth = TenantAuthenticator(store, tenancy.poll_interval)
        self.outbox = Outbox(workdir / "outbox", metering.segment_bytes, metering.fsync_interval)
        self.capture = UsageCapture(self.outbox, EngineClient(GatewayConfig()), metering.tokenize_after)
        self.tenant_id = self.key_id = ""
        self.authorization = b""

    async def start(self, stack: AsyncExitStack) -> None:
        """The benchmark's tenant and key, then the key cache, the outbox and capture (stopped by `stack`)."""
        spec = TenantSpec(
            external_id=TENANT,
            name="gate_micro benchmark",
            rpm=int(LIMITS["rpm"]),
            tpm=int(LIMITS["tpm"]),
            max_concurrency=int(LIMITS["max_concurrency"]),
            budget=LIMITS["budget"],
            models=["*"],
        )
        tenant, _ = await self.store.upsert_tenant(spec)
        self.tenant_id = tenant.id
        key, info = await self.store.create_key(TENANT, name="gate_micro")
        self.key_id, self.authorization = info.id, f"Bearer {key}".encode()
        await self.auth.start()  # polls the store's revision every poll_interval, as in the gateway
        stack.push_async_callback(self.auth.stop)
        self.outbox.open()
        stack.callback(self.outbox.close)
        self.outbox.start_fsync()
        self.capture.start()
        stack.push_async_callback(self.capture.stop)

    async def gate(self, run: Run, stack: AsyncExitStack, name: str, backend: str, url: str | None) -> Step:
        """A tenant gate on a limiter of `backend`, shown to count every limit; its step."""
        limiter = make_limiter(backend, url, "fail_closed" if backend == "redis" else "fail_open")
        stack.push_async_callback(limiter.close)
        gate = TenantGate(self.auth, limiter, PricesConfig())
        run.checks[name] = await check_limits_exercised(gate, self.authorization)
        return gate_step(gate, self.authorization)


async def build_steps(run: Run, plane: Plane, stack: AsyncExitStack) -> dict[str, Step]:
    """The step of each scenario asked for (the Redis one only with a Redis to use)."""
    s = run.settings
    steps: dict[str, Step] = {}
    if "gate-memory" in s.scenarios:
        steps["gate-memory"] = await plane.gate(run, stack, "gate-memory", "memory", None)
    if "gate-redis" in s.scenarios:
        problem = redis_keys.problem(s.redis_url)
        if problem is not None:
            run.notes["gate-redis"] = problem
            console.print(f"[yellow]{escape(problem)}: the Redis rows show n/a[/]")
        else:
            run.meta.update(redis_keys.server_info(s.redis_url) or {})
            stack.callback(_drop_redis_keys, s.redis_url, plane.tenant_id)
            steps["gate-redis"] = await plane.gate(run, stack, "gate-redis", "redis", s.redis_url)
    if "outbox" in s.scenarios:
        steps["outbox"] = outbox_step(plane.outbox, plane.tenant_id, plane.key_id)
    if "capture" in s.scenarios:
        replica = Replica(id="engine-0", url="http://127.0.0.1:9", models={MODEL}, healthy=True)
        steps["capture"] = capture_step(plane.capture, replica, plane.tenant_id, plane.key_id)
    for name, check in run.checks.items():
        console.print(f"{name}: limits counted ({check})")
    return steps


def _drop_redis_keys(url: str, tenant_id: str) -> None:
    console.print(f"removed this run's {redis_keys.drop_keys(url, tenant_id, DEFAULT_PREFIX)} limiter keys from Redis")


async def time_rounds(run: Run, steps: dict[str, Step], outbox: Outbox) -> None:
    """Every scenario's round, round by round in a rotating order; then check the outbox took every record."""
    s = run.settings
    # The gateway's collector settings after start-up (see fleetgate.local.stack): same allocation pauses as there.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
    names = list(steps)
    appended0 = outbox.appended
    for rnd in range(s.rounds):
        # Rotate who goes first, so no scenario always runs right after another one's allocations.
        for name in runner.rotated(names, rnd):
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


async def measure(run: Run, workdir: Path) -> None:
    """Set up the tenant plane and the outbox as the gateway does, then time the scenarios round by round."""
    async with AsyncExitStack() as stack:
        store = await TenantStore.open(f"sqlite:///{workdir / 'fleetgate.db'}")
        stack.push_async_callback(store.close)
        plane = Plane(store, workdir)
        await plane.start(stack)
        steps = await build_steps(run, plane, stack)
        await time_rounds(run, steps, plane.outbox)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, report, and leave nothing behind (temporary files, Redis keys)."""
    settings = parse_args(argv)
    if settings.plot_from is not None:
        console.print(escape(PLOT.redraw(settings.plot_from, settings.docs_path)))
        return 0
    runner.sigterm_interrupts()
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
        runner.run_async(measure(run, workdir))
    except RuntimeError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.meta["loadavg_end"] = os.getloadavg()
    rows = summarise(run)
    checks = verdicts(rows, run)
    print_report(console, rows, checks)
    section = markdown_section(run, rows, checks)
    plotted = {"meta": run.meta, "settings": vars(settings), "rows": rows}
    write_outputs(console, PLOT, section, settings.docs_path, settings.json_path, json_data(run, rows, checks), plotted)
    return 0


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
