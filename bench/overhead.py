"""Gateway overhead: fleetgate (in-process or Redis limits) vs. a direct connection vs. LiteLLM, one fast fake engine.

Run from the repo root: `.venv/bin/python bench/overhead.py` (full, about 6 minutes plus a one-time LiteLLM
install), or `--quick` for a smoke test. `--modes fleetgate,fleetgate-redis` picks the gateway configurations
(both by default; `fleetgate-redis` needs Redis on 127.0.0.1:6379). `--base-src CHECKOUT` adds that checkout's
gateway as `fleetgate-base`, interleaved with the others: before/after in one run. Each gateway runs with its own
fresh state directory, and its demo tenant gets rpm/tpm/concurrency/budget limits (through the admin API) high
enough never to refuse, so the limits are checked and counted on every request. Everything listens on 127.0.0.1;
every process started here is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import redis
from rich.markup import escape

from harness import checkout, redis_keys, runner
from harness.engines import start_fake_engine, start_floor
from harness.keys import DEMO_KEY
from harness.litellm_proxy import DEFAULT_VENV, MASTER_KEY, ensure_venv, installed_version, start_litellm
from harness.loadgen import CellResult, Target, run_cell, sanity_check, upstream_connections
from harness.plots import write_outputs
from harness.procs import Children, StartError, free_port
from harness.report import DEFAULT_DOCS, add_output_options, command_line, machine_info
from harness.usage import snapshot
from overhead_report import (
    EXPECTED_CHUNKS,
    PLOT,
    Run,
    Settings,
    aggregate,
    background_cpu,
    json_data,
    markdown_section,
    medians_list,
    print_report,
    verdicts,
)
from overhead_targets import BASE_MODE, GATEWAY_MODES, ROLE_OF, configure_limits, start_mode

console = runner.console()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per target and cell (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of unmeasured load before each cell")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all cells; medians are reported (default 3)")
    p.add_argument("--concurrency", default="1,32", help="comma-separated client concurrencies (default 1,32)")
    p.add_argument(
        "--modes",
        default=",".join(GATEWAY_MODES),
        help=f"comma-separated gateway modes to measure, of {','.join(GATEWAY_MODES)} (default: all)",
    )
    p.add_argument("--redis-url", default=redis_keys.DEFAULT_REDIS_URL, help="Redis of fleetgate-redis (%(default)s)")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    p.add_argument("--litellm-venv", type=Path, default=DEFAULT_VENV, help=f"LiteLLM's venv (default {DEFAULT_VENV})")
    p.add_argument("--burst", action="store_true", help="fake engine sends each stream in one write, not per event")
    add_output_options(p)
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the child logs")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 s per cell, 1 round, no LiteLLM, no docs")
    checkout.add_option(p, f"the gateway as {BASE_MODE}")
    return p


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options; `--quick` is a 1 s x 1 round smoke test without LiteLLM that leaves the docs alone."""
    p = _parser()
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.rounds, a.no_litellm = 1.0, 1, True
    try:
        concurrency = sorted({int(c) for c in a.concurrency.split(",") if c.strip()})
    except ValueError:
        p.error(f"--concurrency takes comma-separated integers, not {a.concurrency!r}")
    if not concurrency or min(concurrency) < 1 or a.duration <= 0 or a.rounds < 1:
        p.error("--concurrency needs positive integers; --duration and --rounds must be positive")
    modes = {m.strip() for m in a.modes.split(",") if m.strip()}
    if not modes or modes - set(GATEWAY_MODES):
        p.error(f"--modes takes a comma-separated subset of {','.join(GATEWAY_MODES)}, not {a.modes!r}")
    docs: Path | None = a.docs or DEFAULT_DOCS
    # A smoke test or a run without every gateway mode must not overwrite the full numbers.
    if a.no_docs or (a.docs is None and a.plot_from is None and (a.quick or modes != set(GATEWAY_MODES) or a.base_src)):
        docs = None
    base = checkout.from_option(p, a.base_src)
    return Settings(
        duration=a.duration,
        warmup=a.warmup if a.warmup is not None else min(1.0, max(0.2, a.duration / 5)),
        rounds=a.rounds,
        concurrency=concurrency,
        modes=[m for m in GATEWAY_MODES if m in modes] + ([BASE_MODE] if base else []),
        redis_url=a.redis_url,
        litellm=not a.no_litellm,
        litellm_venv=a.litellm_venv,
        burst=a.burst,
        json_path=a.json_path,
        docs_path=docs,
        keep_logs=a.keep_logs,
        # PYTHONPATH decides which fleetgate the gateway runs (see fleetgate_source), so it belongs to the command.
        command=command_line(),
        plot_from=a.plot_from,
        base_src=base.root if base else None,
    )


async def _drop_failing(run: Run, targets: list[Target]) -> None:
    """One request of each kind per target: a gateway that fails it ends the run, LiteLLM only shows n/a."""
    for t in list(targets):
        problem = await sanity_check(t, EXPECTED_CHUNKS)
        if problem is None:
            continue
        if t.name != "litellm":
            raise RuntimeError(f"{t.name} failed its sanity check: {problem}")
        run.notes["litellm"] = f"failed its sanity check: {problem}"
        console.print(f"[yellow]LiteLLM {escape(run.notes['litellm'])}; reporting n/a for it[/]")
        await t.close()
        targets.remove(t)


async def measure(run: Run, targets: list[Target], upstream_port: int, probe: Callable[[], dict[str, float]]) -> None:
    """Interleave the targets cell by cell, round by round, so drift and noise hit them alike."""
    s = run.settings
    stats_session = aiohttp.ClientSession()
    for t in targets:
        await t.open(max(s.concurrency))
    try:
        await _drop_failing(run, targets)
        cells = [(c, stream) for c in s.concurrency for stream in (False, True)]
        total = s.rounds * len(cells) * len(targets)
        est = total * (s.duration + s.warmup)
        console.print(
            f"measuring {total} cells of {s.duration:g} s (+{s.warmup:g} s warm-up): about {est / 60:.1f} min"
        )
        for rnd in range(s.rounds):
            for c, stream in cells:
                for t in runner.rotated(targets, rnd):
                    await run_cell(t, c, stream, s.warmup, EXPECTED_CHUNKS)
                    before = await upstream_connections(stats_session, upstream_port)
                    cell = await run_cell(t, c, stream, s.duration, EXPECTED_CHUNKS, probe)
                    cell.upstream_conns = await upstream_connections(stats_session, upstream_port) - before
                    run.cells.append(cell)
                    _progress(rnd, s.rounds, cell)
    finally:
        for t in targets:
            await t.close()
        await stats_session.close()


def _progress(rnd: int, rounds: int, cell: CellResult) -> None:
    summ = cell.summary()
    ttfb = f" ttfb {summ['ttfb_p50_ms']:.2f}" if cell.stream else ""
    errors = f" [red]errors {cell.errors} {cell.error_kinds}[/]" if cell.errors else ""
    console.print(
        f"  round {rnd + 1}/{rounds} c={cell.concurrency:<3} {'stream' if cell.stream else 'whole '} "
        f"{cell.target:<15} {cell.rps:8.0f} req/s  p50 {summ['p50_ms']:.2f} p99 {summ['p99_ms']:.2f}{ttfb} ms"
        f"  client CPU {cell.cpu.get('client', 0) / cell.elapsed:.0%}"
        f"  other CPU {background_cpu(cell) / cell.elapsed:.0%}{errors}"
    )


def start_gateways(run: Run, workdir: Path, upstream_port: int, children: Children) -> list[tuple[Target, int]]:
    """Start each gateway mode and prove its limits work; return the targets (and pids) of those that run."""
    s = run.settings
    base = checkout.Checkout(s.base_src) if s.base_src else None
    targets: list[tuple[Target, int]] = []
    for mode in s.modes:
        if mode == "fleetgate-redis":
            info = redis_keys.server_info(s.redis_url)
            if info is None:
                run.notes[mode] = f"Redis at {s.redis_url} unreachable"
                console.print(f"[yellow]{mode}: {escape(run.notes[mode])}; reporting n/a for it[/]")
                continue
            run.meta.update(info)
        if mode == BASE_MODE and base is not None:
            run.meta["base_source"] = base.describe()
        gateway = start_mode(workdir, upstream_port, mode, s.redis_url, base)
        children.add(gateway.child)
        console.print(f"{mode}: pid {gateway.pid} on :{gateway.port}, state in {gateway.home}")
        tenant_id, run.checks[mode] = configure_limits(gateway.url)
        console.print(f"{mode}: limits enforced ({run.checks[mode]})")
        run.meta.setdefault("demo_tenant_ids", {})[mode] = tenant_id
        targets.append((Target(mode, gateway.url, DEMO_KEY, ROLE_OF[mode]), gateway.pid))
    return targets


def prepare_litellm(run: Run) -> Path | None:
    """LiteLLM's venv python (installed on first use), or None with the reason in the notes."""
    s = run.settings
    if not s.litellm:
        run.notes["litellm"] = "skipped (--no-litellm or --quick)"
        return None
    try:
        python = ensure_venv(s.litellm_venv, lambda msg: console.print(f"litellm: {escape(msg)}"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        run.notes["litellm"] = f"could not be installed: {str(exc).strip().splitlines()[0][:200]}"
        console.print(f"[yellow]LiteLLM {escape(run.notes['litellm'])}[/]")
        return None
    run.meta["litellm_version"] = installed_version(s.litellm_venv)
    return python


def start_litellm_target(
    run: Run, python: Path, workdir: Path, upstream_port: int, children: Children
) -> tuple[Target, int] | None:
    """LiteLLM in front of the fake engine (and its pid), or None with the reason in the notes."""
    port = free_port()
    console.print("LiteLLM: starting (it imports a lot; this takes a while)")
    try:
        litellm = children.add(start_litellm(python, workdir, upstream_port, port))
    except StartError as exc:
        run.notes["litellm"] = f"could not be started: {str(exc).splitlines()[0][:200]}"
        console.print(f"[yellow]LiteLLM {escape(run.notes['litellm'])}[/]")
        return None
    console.print(f"LiteLLM {run.meta.get('litellm_version', '?')}: pid {litellm.pid} on :{port}")
    return Target("litellm", f"http://127.0.0.1:{port}", MASTER_KEY, "litellm"), litellm.pid


def start_and_measure(run: Run, workdir: Path, children: Children) -> None:
    """Start the fake engine, the floor, the gateways and LiteLLM, then measure them all."""
    litellm_python = prepare_litellm(run)
    upstream, upstream_port = start_fake_engine(workdir, run.settings.burst)
    children.add(upstream)
    console.print(f"fake engine: pid {upstream.pid} on :{upstream_port}")
    floor, floor_port = start_floor(workdir, upstream_port)
    children.add(floor)
    started = [
        (Target("direct", f"http://127.0.0.1:{upstream_port}", None, "engine"), upstream.pid),
        (Target("floor", f"http://127.0.0.1:{floor_port}", None, "floor"), floor.pid),
        *start_gateways(run, workdir, upstream_port, children),
    ]
    if litellm_python is not None:
        started += filter(None, [start_litellm_target(run, litellm_python, workdir, upstream_port, children)])
    targets = [t for t, _ in started]
    roles = {t.cpu_role: pid for t, pid in started}
    if "redis_pid" in run.meta:
        roles["redis"] = int(run.meta["redis_pid"])  # CPU of the shared server, reported next to fleetgate-redis
    runner.run_async(measure(run, targets, upstream_port, lambda: snapshot(roles)))


def _redis_after(run: Run, clean_up: bool) -> None:
    """Evidence that the Redis limiter, not the in-process fallback, counted the run; or drop this run's keys."""
    tenant = run.meta.get("demo_tenant_ids", {}).get("fleetgate-redis")
    if tenant is None:
        return
    url = run.settings.redis_url
    if not clean_up:
        spend = redis_keys.spend(url, tenant)
        run.checks["fleetgate-redis"] += f"; after the run Redis held {spend:,} micros of budget spend for it"
        return
    try:
        console.print(f"removed {redis_keys.drop_keys(url, tenant)} limiter keys from Redis")
    except (redis.RedisError, OSError) as exc:
        console.print(f"[yellow]could not remove this run's limiter keys from Redis: {exc}[/]")


def run_benchmark(run: Run) -> int:
    """Start everything, measure, stop everything; 0, or 1 on an error, 130 when interrupted."""
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-bench-"))
    failed = True
    try:
        with Children() as children:
            start_and_measure(run, workdir, children)
            _redis_after(run, clean_up=False)
        failed = False
    except (StartError, RuntimeError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted; stopping everything[/]")
        return 130
    finally:
        _redis_after(run, clean_up=True)
        if run.settings.keep_logs or failed:
            console.print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Start the fake engine, the gateways and LiteLLM, measure, report, and stop them all."""
    settings = parse_args(argv)
    if settings.plot_from is not None:
        console.print(escape(PLOT.redraw(settings.plot_from, settings.docs_path)))
        return 0
    runner.sigterm_interrupts()
    run = Run(settings, machine_info(("aiohttp", "uvicorn", "starlette", "uvloop", "httptools", "redis")))
    code = run_benchmark(run)
    if code:
        return code
    run.meta["loadavg_end"] = os.getloadavg()
    agg = aggregate(run)
    checks = verdicts(agg, settings, run.notes)
    print_report(console, run, agg, checks)
    section = markdown_section(run, agg, checks)
    plotted = {"meta": run.meta, "settings": vars(settings), "medians": medians_list(agg)}
    write_outputs(console, PLOT, section, settings.docs_path, settings.json_path, json_data(run, agg, checks), plotted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
