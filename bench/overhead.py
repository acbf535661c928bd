"""Gateway overhead: fleetgate (in-process or Redis limits) vs. a direct connection vs. LiteLLM, one fast fake engine.

Run from the repo root: `.venv/bin/python bench/overhead.py` (full, about 6 minutes plus a one-time LiteLLM
install), or `--quick` for a smoke test. `--modes fleetgate,fleetgate-redis` picks the gateway configurations
(both by default; `fleetgate-redis` needs Redis on 127.0.0.1:6379). Each gateway runs with its own fresh state
directory, and its demo tenant gets rpm/tpm/concurrency/budget limits (through the admin API) high enough never
to refuse, so the limits are checked and counted on every request. Everything listens on 127.0.0.1; every process
started here is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import fake_upstream
import plots
from bench_keys import ADMIN_KEY, DEMO_KEY, KEY_ENV
from litellm_target import DEFAULT_VENV, MASTER_KEY, ensure_venv, installed_version, start_litellm
from loadgen import NON_STREAM_BODY, STREAM_BODY, CellResult, Target, check_completion, check_stream, run_cell
from procs import Child, StartError, cpu_seconds, free_port, machine_busy_seconds, start, wait_ready
from report import DEFAULT_DOCS, command_line, machine_info, machine_line, update_docs

SECTION = "## Gateway overhead (bench/overhead.py)"
DEMO_TENANT = "demo"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_KEY_PREFIX = "fleetgate:lim:"  # fleetgate.tenancy.limits.redis.DEFAULT_PREFIX (the gateway may be a clone)
# The client never asks for usage, so every proxy must hand it exactly the engine's content and finish chunks.
EXPECTED_CHUNKS = fake_upstream.EXPECTED_EVENTS
GATEWAY_MODES = ("fleetgate", "fleetgate-redis")
BASE_MODE = "fleetgate-base"  # the same gateway from another checkout (--base-src), for before/after in one run
TARGET_ORDER = ("direct", "floor", "fleetgate", BASE_MODE, "fleetgate-redis", "litellm")
ROLE_OF = {
    "direct": "engine",
    "floor": "floor",
    "fleetgate": "gateway",
    BASE_MODE: "gateway-base",
    "fleetgate-redis": "gateway-redis",
    "litellm": "litellm",
}
# What each gateway mode changes from the defaults. fail_closed: a Redis problem shows up as errors in the table
# instead of the gateway quietly deciding in-process (fail_open, the default) while the row says "Redis".
MODE_ENV: dict[str, dict[str, str]] = {
    "fleetgate": {},
    BASE_MODE: {},
    "fleetgate-redis": {"FLEETGATE_LIMITS__BACKEND": "redis", "FLEETGATE_LIMITS__ON_REDIS_ERROR": "fail_closed"},
}
# A price for the fake engine's model, so every request also moves the tenant's budget counter.
PRICE_ENV = {"FLEETGATE_PRICES__MODELS__FAKE__INPUT": "0.10", "FLEETGATE_PRICES__MODELS__FAKE__OUTPUT": "0.20"}
# High enough never to refuse at any rate this benchmark reaches (a bucket holds a minute of traffic, full at the
# start), yet every limit is checked and counted on every request.
DEMO_LIMITS: dict[str, Any] = {"rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrency": 100_000, "budget": 1e9}
KEY_CACHE_POLL = 0.5  # tenancy.poll_interval: how soon a gateway sees an admin change

# The goals this benchmark checks (see the verdict lines in the report).
MAX_ADDED_P50_MS = 1.0
MIN_RATE_VS_DIRECT = 0.60
MIN_RATE_VS_LITELLM = 10.0
MAX_CPU_MS_PER_CHUNK = 0.05

T = TypeVar("T")

# Wide enough for the table when the output goes to a file or a pipe, where Rich would assume 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass
class Settings:
    """What one run does, from the command line."""

    duration: float
    warmup: float
    rounds: int
    concurrency: list[int]
    modes: list[str]
    redis_url: str
    litellm: bool
    litellm_venv: Path
    burst: bool
    json_path: Path | None
    docs_path: Path | None
    keep_logs: bool
    command: str
    plot_from: Path | None = None
    base_src: Path | None = None  # a checkout whose src/ runs as BASE_MODE


@dataclass
class Run:
    """Everything measured, plus the facts the report needs."""

    settings: Settings
    meta: dict[str, Any]
    cells: list[CellResult] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # target -> why it shows n/a
    checks: dict[str, str] = field(default_factory=dict)  # gateway mode -> how its limits were shown to work


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options; `--quick` is a 1 s x 1 round smoke test without LiteLLM that leaves the docs alone."""
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
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"Redis of fleetgate-redis ({DEFAULT_REDIS_URL})")
    p.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM comparison")
    p.add_argument("--litellm-venv", type=Path, default=DEFAULT_VENV, help=f"LiteLLM's venv (default {DEFAULT_VENV})")
    p.add_argument("--burst", action="store_true", help="fake engine sends each stream in one write, not per event")
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write raw numbers to this JSON file")
    p.add_argument("--docs", type=Path, default=None, help=f"Markdown file to update (default {DEFAULT_DOCS})")
    p.add_argument("--no-docs", action="store_true", help="do not update the Markdown file")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the child logs")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 s per cell, 1 round, no LiteLLM, no docs")
    p.add_argument(
        "--base-src",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help=f"also run the gateway from this checkout (e.g. a `git worktree` of the last release) as {BASE_MODE},"
        " interleaved with the others: before/after in one run (leaves the docs alone)",
    )
    p.add_argument(
        "--plot-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="only redraw the plot and its docs link from a --json result",
    )
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
    if a.base_src is not None and not (a.base_src / "src" / "fleetgate").is_dir():
        p.error(f"--base-src {a.base_src} holds no src/fleetgate (give a checkout of this repository)")
    return Settings(
        duration=a.duration,
        warmup=a.warmup if a.warmup is not None else min(1.0, max(0.2, a.duration / 5)),
        rounds=a.rounds,
        concurrency=concurrency,
        modes=[m for m in GATEWAY_MODES if m in modes] + ([BASE_MODE] if a.base_src else []),
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
        base_src=a.base_src.resolve() if a.base_src else None,
    )


def start_upstream(workdir: Path, burst: bool) -> tuple[Child, int]:
    """Start the fake engine on a free port and wait for /health."""
    port_file = workdir / "upstream.port"
    port_file.unlink(missing_ok=True)  # a stale file would name a port nobody listens on
    args = [sys.executable, str(Path(fake_upstream.__file__).resolve()), "--port", "0", "--port-file", str(port_file)]
    if burst:
        args.append("--burst")
    child = start("fake upstream", args, workdir / "upstream.log")
    try:
        port = wait_port_file(child, port_file, "the fake upstream")
        wait_ready(child, f"http://127.0.0.1:{port}/health", 30)
    except BaseException:
        child.stop()
        raise
    return child, port


def start_floor(workdir: Path, upstream_port: int) -> tuple[Child, int]:
    """Start bench/floor_proxy.py (the least a Python metering proxy does) in front of the fake engine."""
    port_file = workdir / "floor.port"
    port_file.unlink(missing_ok=True)
    script = Path(__file__).resolve().parent / "floor_proxy.py"
    args = [sys.executable, str(script), "--upstream-port", str(upstream_port), "--port-file", str(port_file)]
    child = start("floor", [*args, "--outbox", str(workdir / "floor-outbox.log")], workdir / "floor.log")
    try:
        return child, wait_port_file(child, port_file, "the floor proxy")
    except BaseException:
        child.stop()
        raise


def wait_port_file(child: Child, port_file: Path, what: str, timeout: float = 30) -> int:
    """The port a child writes to `port_file` once it listens; StartError if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if not child.alive() or time.monotonic() > deadline:
            raise StartError(f"{what} did not start; log:\n{child.log_tail()}")
        time.sleep(0.02)
    return int(port_file.read_text())


def start_gateway(
    workdir: Path, upstream_port: int, mode: str, redis_url: str, base_src: Path | None = None
) -> tuple[Child, int]:
    """Start `fleetgate up` in `mode` in front of the fake engine, with its own fresh state dir; wait for /readyz."""
    exe = Path(sys.executable).parent / "fleetgate"
    fleetgate = str(exe) if exe.exists() else shutil.which("fleetgate")
    if fleetgate is None:
        raise StartError("no `fleetgate` command next to this Python or on PATH; install the package first")
    command = [fleetgate]
    port = free_port()
    home = workdir / mode
    home.mkdir(parents=True, exist_ok=True)
    # Defaults plus this mode's settings only: no FLEETGATE_* overrides from this shell, no fleetgate.yaml (the
    # working directory is ours), and a state dir of its own, so the SQLite database and the outbox start empty.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(PRICE_ENV)
    env.update(MODE_ENV[mode])
    env["FLEETGATE_STATE_DIR"] = str(home / "state")
    env["FLEETGATE_RUN_DIR"] = str(home / "run")
    env.update(KEY_ENV)
    if mode == "fleetgate-redis":
        env["FLEETGATE_LIMITS__REDIS_URL"] = redis_url
    if mode == BASE_MODE and base_src is not None:
        # The other checkout's package first on the path, this venv's dependencies; a setting it predates is left out
        # (its config refuses unknown fields; it always sent the routing headers this one sends when asked).
        env["PYTHONPATH"] = str(base_src / "src")
        env.pop("FLEETGATE_GATEWAY__EXPOSE_ROUTE_HEADERS", None)
        command = [sys.executable, "-m", "fleetgate.cli.main"]
    args = [*command, "up", "--engine", f"http://127.0.0.1:{upstream_port}", "--port", str(port), "--no-self-test"]
    child = start(mode, args, workdir / f"{mode}.log", env=env, cwd=home)
    try:
        wait_ready(child, f"http://127.0.0.1:{port}/readyz", 60)
    except BaseException:
        child.stop()
        raise
    return child, port


def _http(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One request to 127.0.0.1 with a bearer key; (status, body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("authorization", f"Bearer {key}")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def put_demo_limits(port: int, limits: dict[str, Any]) -> dict[str, Any]:
    """`PUT /admin/tenants/demo` with these limits and `models: ["*"]`; return the tenant as the API shows it."""
    body = {"name": "Demo tenant", "models": ["*"], **limits}
    status, data = _http("PUT", f"http://127.0.0.1:{port}/admin/tenants/{DEMO_TENANT}", ADMIN_KEY, body)
    if status not in (200, 201):
        raise RuntimeError(f"PUT /admin/tenants/{DEMO_TENANT} answered HTTP {status}: {data[:300]!r}")
    tenant: dict[str, Any] = json.loads(data)
    wrong = {k: (v, tenant.get(k)) for k, v in limits.items() if tenant.get(k) != v}
    if wrong or tenant.get("models") != ["*"]:
        raise RuntimeError(f"the demo tenant did not take the limits (wanted, got): {wrong}, models {tenant['models']}")
    return tenant


def _chat_status(port: int) -> int:
    status, _ = _http("POST", f"http://127.0.0.1:{port}/v1/chat/completions", DEMO_KEY, json.loads(NON_STREAM_BODY))
    return status


def _until(port: int, want: int, timeout: float) -> int:
    """Send requests until one answers HTTP `want`; return how many it took, or raise RuntimeError."""
    deadline = time.monotonic() + timeout
    sent = 0
    while time.monotonic() < deadline:
        sent += 1
        status = _chat_status(port)
        if status == want:
            return sent
        if status not in (200, 429):
            raise RuntimeError(f"a chat request answered HTTP {status} while checking the demo tenant's limits")
        time.sleep(0.05)
    raise RuntimeError(f"no HTTP {want} within {timeout:.0f}s while checking the demo tenant's limits")


def configure_limits(mode: str, port: int) -> tuple[str, str]:
    """Show the gateway enforces the demo tenant's limits (rpm 1 must answer 429), then set the benchmark's high
    limits and wait until requests pass again; return (the tenant id, what was shown)."""
    put_demo_limits(port, {**DEMO_LIMITS, "rpm": 1})
    refused_after = _until(port, 429, timeout=20 * KEY_CACHE_POLL)
    tenant = put_demo_limits(port, DEMO_LIMITS)
    _until(port, 200, timeout=20 * KEY_CACHE_POLL)
    # The key cache now holds the new limits (a 200 needs rpm > 1); one more poll interval for good measure.
    time.sleep(2 * KEY_CACHE_POLL)
    shown = f"with rpm 1 request {refused_after} got HTTP 429; then {_limits_text(DEMO_LIMITS)} let requests through"
    console.print(f"{mode}: limits enforced ({shown})")
    return str(tenant["id"]), shown


def _limits_text(limits: dict[str, Any]) -> str:
    return (
        f"rpm {limits['rpm']:,}, tpm {limits['tpm']:,}, max_concurrency {limits['max_concurrency']:,}, "
        f"budget {limits['budget']:,.0f}/month"
    )


def redis_client(url: str) -> redis.Redis:
    """A short-timeout client for checks and clean-up (the gateway has its own)."""
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)


def redis_pid(url: str) -> int | None:
    """The Redis server's process id (its CPU is reported next to fleetgate-redis), or None if unreachable."""
    try:
        with redis_client(url) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def redis_spend(url: str, tenant_id: str) -> int:
    """Budget spend (micros) this run's demo tenant has in Redis, summed over its month keys."""
    total = 0
    with redis_client(url) as client:
        for key in client.scan_iter(match=f"{REDIS_KEY_PREFIX}{{{tenant_id}}}:spend:*", count=1000):
            total += int(client.get(key) or 0)
    return total


def drop_redis_keys(url: str, tenant_id: str) -> int:
    """Delete the limiter keys of this run's demo tenant (a fresh id, so nothing else matches); return how many."""
    with redis_client(url) as client:
        keys = list(client.scan_iter(match=f"{REDIS_KEY_PREFIX}{{{tenant_id}}}:*", count=1000))
        if keys:
            client.delete(*keys)
    return len(keys)


async def sanity_check(target: Target) -> str | None:
    """One request of each kind; return what is wrong, or None."""
    assert target.session is not None
    url = target.base_url + "/v1/chat/completions"
    try:
        async with target.session.post(url, data=NON_STREAM_BODY, headers=target.headers()) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"non-stream request answered HTTP {resp.status}: {data[:200]!r}"
            problem = check_completion(data)
            if problem:
                return f"non-stream: {problem}: {data[:200]!r}"
        async with target.session.post(url, data=STREAM_BODY, headers=target.headers()) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"stream request answered HTTP {resp.status}: {data[:200]!r}"
            _, problem = check_stream(data, EXPECTED_CHUNKS)
            if problem:
                return f"stream: {problem}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"request failed: {type(exc).__name__}: {exc}"
    return None


async def upstream_connections(session: aiohttp.ClientSession, port: int) -> int:
    """How many connections the fake engine has accepted so far."""
    async with session.get(f"http://127.0.0.1:{port}/stats") as resp:
        return int((await resp.json())["connections"])


async def measure(run: Run, targets: list[Target], upstream_port: int, probe: Callable[[], dict[str, float]]) -> None:
    """Interleave the targets cell by cell, round by round, so drift and noise hit them alike."""
    s = run.settings
    stats_session = aiohttp.ClientSession()
    for t in targets:
        await t.open(max(s.concurrency))
    try:
        for t in list(targets):
            problem = await sanity_check(t)
            if problem is None:
                continue
            if t.name != "litellm":
                raise RuntimeError(f"{t.name} failed its sanity check: {problem}")
            run.notes["litellm"] = f"failed its sanity check: {problem}"
            console.print(f"[yellow]LiteLLM {escape(run.notes['litellm'])}; reporting n/a for it[/]")
            await t.close()
            targets.remove(t)
        cells = [(c, stream) for c in s.concurrency for stream in (False, True)]
        total = s.rounds * len(cells) * len(targets)
        est = total * (s.duration + s.warmup)
        console.print(
            f"measuring {total} cells of {s.duration:g} s (+{s.warmup:g} s warm-up): about {est / 60:.1f} min"
        )
        for rnd in range(s.rounds):
            # Rotate who goes first each round, so no target always runs right after another one's load.
            order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
            for c, stream in cells:
                for t in order:
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


def background_cpu(cell: CellResult) -> float:
    """CPU seconds the machine spent on processes other than ours during the cell (noise from other work)."""
    ours = sum(v for k, v in cell.cpu.items() if "." not in k and k != "machine")
    return max(0.0, cell.cpu.get("machine", ours) - ours)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def aggregate(run: Run) -> dict[tuple[str, int, bool], dict[str, Any]]:
    """Medians across rounds for each (target, concurrency, stream) cell, plus per-request and per-chunk CPU."""
    groups: dict[tuple[str, int, bool], list[CellResult]] = {}
    for cell in run.cells:
        groups.setdefault((cell.target, cell.concurrency, cell.stream), []).append(cell)
    out: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for key, cells in groups.items():
        role = ROLE_OF[key[0]]
        sums = [c.summary() for c in cells]
        cpu_req = [c.cpu.get(role, 0.0) / c.requests * 1e3 if c.requests else None for c in cells]
        cpu_chunk = [c.cpu.get(role, 0.0) / c.chunks * 1e3 if c.chunks else None for c in cells]
        out[key] = {
            "rounds": len(cells),
            "rps": _median([x["rps"] for x in sums]),
            "p50_ms": _median([x["p50_ms"] for x in sums]),
            "p99_ms": _median([x["p99_ms"] for x in sums]),
            "ttfb_p50_ms": _median([x["ttfb_p50_ms"] for x in sums]),
            "cpu_ms_per_req": _median(cpu_req),
            "cpu_ms_per_chunk": _median(cpu_chunk) if key[2] else None,
            "client_cpu_share": _median([c.cpu.get("client", 0.0) / c.elapsed for c in cells]),
            "server_sys_fraction": _median(
                [c.cpu[f"{role}.sys"] / c.cpu[role] if c.cpu.get(role) else None for c in cells]
            ),
            "other_cpu_share": _median([background_cpu(c) / c.elapsed for c in cells]),
            "engine_cpu_share": _median([c.cpu.get("engine", 0.0) / c.elapsed for c in cells]),
            # The Redis server's CPU while this target ran (it is not in the gateway's process tree).
            "redis_cpu_ms_per_req": _median(
                [c.cpu["redis"] / c.requests * 1e3 if c.requests and "redis" in c.cpu else None for c in cells]
            ),
            "requests": sum(c.requests for c in cells),
            "errors": sum(c.errors for c in cells),
            "upstream_conns_opened": sum(c.upstream_conns or 0 for c in cells),
        }
    return out


@dataclass
class Verdict:
    """One goal, the number measured against it, and whether it was met (None when it cannot be judged)."""

    goal: str
    measured: str
    ok: bool | None

    def line(self, markdown: bool = False) -> str:
        """`PASS|FAIL|n/a  goal: measured`."""
        word = {True: "PASS", False: "FAIL", None: "n/a"}[self.ok]
        if markdown:
            word = f"**{word}**"
        return f"{word} {self.goal}: {self.measured}"


def verdicts(agg: dict[tuple[str, int, bool], dict[str, Any]], s: Settings, notes: dict[str, str]) -> list[Verdict]:
    """Check the measured medians of every gateway mode against the goals."""
    out: list[Verdict] = []
    for mode in s.modes:
        out += _mode_verdicts(agg, s, notes, mode)
    return out


def _getter(agg: dict[tuple[str, int, bool], dict[str, Any]]) -> Callable[[str, int, bool, str], float | None]:
    def get(target: str, c: int, stream: bool, metric: str) -> float | None:
        row = agg.get((target, c, stream))
        return None if row is None else row.get(metric)

    return get


def _mode_verdicts(
    agg: dict[tuple[str, int, bool], dict[str, Any]], s: Settings, notes: dict[str, str], mode: str
) -> list[Verdict]:
    """The four goals for one gateway mode (`fleetgate`, `fleetgate-redis`)."""
    lo, hi = min(s.concurrency), max(s.concurrency)
    get = _getter(agg)
    why = f" ({mode} n/a: {notes[mode]})" if mode in notes else ""
    out: list[Verdict] = []
    added = {m: _diff(get(mode, lo, m, "p50_ms"), get("direct", lo, m, "p50_ms")) for m in (False, True)}
    out.append(
        Verdict(
            f"{mode}: added p50 <= {MAX_ADDED_P50_MS:g} ms at c={lo}",
            f"{_ms(added[False], '+.2f')} ms non-stream, "
            f"{_ms(added[True], '+.2f')} ms stream (to the end of the stream){why}",
            _all_ok(v <= MAX_ADDED_P50_MS if v is not None else None for v in added.values()),
        )
    )
    share = {m: _ratio(get(mode, hi, m, "rps"), get("direct", hi, m, "rps")) for m in (False, True)}
    client = max((get("direct", hi, m, "client_cpu_share") or 0.0) for m in (False, True))
    out.append(
        Verdict(
            f"{mode}: rate through the gateway >= {MIN_RATE_VS_DIRECT:.0%} of direct at c={hi}",
            f"{_pct(share[False])} non-stream, {_pct(share[True])} stream"
            # Then "direct" measures the load generator's ceiling, not the engine's: say so next to the ratio.
            + (f" (direct is bound by the load generator: up to {client:.0%} of a core)" if client >= 0.8 else "")
            + why,
            _all_ok(v >= MIN_RATE_VS_DIRECT if v is not None else None for v in share.values()),
        )
    )
    vs = {m: _ratio(get(mode, hi, m, "rps"), get("litellm", hi, m, "rps")) for m in (False, True)}
    out.append(
        Verdict(
            f"{mode}: rate >= {MIN_RATE_VS_LITELLM:g}x LiteLLM's at c={hi}",
            f"{_times(vs[False])} non-stream, {_times(vs[True])} stream"
            + (f" (LiteLLM n/a: {notes['litellm']})" if "litellm" in notes else "")
            + why,
            _all_ok(v >= MIN_RATE_VS_LITELLM if v is not None else None for v in vs.values()),
        )
    )
    per_chunk = get(mode, hi, True, "cpu_ms_per_chunk")
    per_chunk_lo = get(mode, lo, True, "cpu_ms_per_chunk")
    out.append(
        Verdict(
            f"{mode}: gateway CPU <= {MAX_CPU_MS_PER_CHUNK:g} ms per streamed chunk (c={hi})",
            f"{_ms(per_chunk, '.3f')} ms at c={hi} ({_ms(per_chunk_lo, '.3f')} ms at c={lo}){why}",
            None if per_chunk is None else per_chunk <= MAX_CPU_MS_PER_CHUNK,
        )
    )
    return out


def redis_comparison(agg: dict[tuple[str, int, bool], dict[str, Any]], s: Settings) -> list[str]:
    """What the Redis back end costs over in-process limits, from the same cells (empty unless both ran)."""
    get = _getter(agg)
    lo, hi = min(s.concurrency), max(s.concurrency)
    if not all(get(m, lo, False, "p50_ms") is not None for m in GATEWAY_MODES):
        return []
    lines = []
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        p50 = _diff(get("fleetgate-redis", lo, stream, "p50_ms"), get("fleetgate", lo, stream, "p50_ms"))
        rate = _ratio(get("fleetgate-redis", hi, stream, "rps"), get("fleetgate", hi, stream, "rps"))
        cpu = _diff(
            get("fleetgate-redis", hi, stream, "cpu_ms_per_req"), get("fleetgate", hi, stream, "cpu_ms_per_req")
        )
        redis_cpu = get("fleetgate-redis", hi, stream, "redis_cpu_ms_per_req")
        lines.append(
            f"Redis limits vs in-process, {mode}: p50 {_ms(p50, '+.2f')} ms at c={lo}; rate {_pct(rate)} of "
            f"in-process at c={hi}; gateway CPU {_ms(cpu, '+.3f')} ms/req, plus {_ms(redis_cpu, '.3f')} ms/req "
            f"in the Redis server (c={hi})"
        )
    return lines


def base_comparison(agg: dict[tuple[str, int, bool], dict[str, Any]], s: Settings) -> list[str]:
    """This checkout against --base-src, from the same interleaved cells (empty without a base)."""
    if BASE_MODE not in s.modes:
        return []
    get = _getter(agg)
    lo, hi = min(s.concurrency), max(s.concurrency)
    lines = []
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        p50 = _diff(get("fleetgate", lo, stream, "p50_ms"), get(BASE_MODE, lo, stream, "p50_ms"))
        rate = _ratio(get("fleetgate", hi, stream, "rps"), get(BASE_MODE, hi, stream, "rps"))
        cpu = _diff(get("fleetgate", hi, stream, "cpu_ms_per_req"), get(BASE_MODE, hi, stream, "cpu_ms_per_req"))
        lines.append(
            f"This checkout vs {BASE_MODE}, {mode}: p50 {_ms(p50, '+.3f')} ms at c={lo}; rate {_pct(rate)} of the"
            f" base's at c={hi}; CPU {_ms(cpu, '+.3f')} ms/req at c={hi}"
        )
    return lines


def floor_comparison(agg: dict[tuple[str, int, bool], dict[str, Any]], s: Settings) -> list[str]:
    """What a bare Python metering proxy reaches, and what fleetgate's features cost on top of it."""
    get = _getter(agg)
    hi = max(s.concurrency)
    lines = []
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        floor_share = _ratio(get("floor", hi, stream, "rps"), get("direct", hi, stream, "rps"))
        floor_cpu = get("floor", hi, stream, "cpu_ms_per_req")
        parts = [
            f"Floor, {mode}: a bare Python metering proxy reaches {_pct(floor_share)} of direct at c={hi} with "
            f"{_ms(floor_cpu, '.3f')} ms CPU per request"
        ]
        for m in s.modes:
            share = _ratio(get(m, hi, stream, "rps"), get("floor", hi, stream, "rps"))
            extra = _diff(get(m, hi, stream, "cpu_ms_per_req"), floor_cpu)
            parts.append(f"{m} reaches {_pct(share)} of the floor's rate, its features cost {_ms(extra, '+.3f')} ms")
        lines.append("; ".join(parts))
    return lines


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _all_ok(checks: Any) -> bool | None:
    values = list(checks)
    if any(v is None for v in values):
        return None
    return all(values)


def _ms(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _times(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}x"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


COLUMNS = (
    "target",
    "mode",
    "c",
    "req/s",
    "p50 ms",
    "p99 ms",
    "TTFB p50 ms",
    "CPU ms/req",
    "CPU ms/chunk",
    "client CPU",
    "other CPU",
    "errors",
)


def table_rows(
    agg: dict[tuple[str, int, bool], dict[str, Any]], s: Settings, notes: dict[str, str]
) -> list[tuple[str, ...]]:
    """One row per target and cell; a target that could not run shows n/a (with the reason in the notes)."""
    wanted = {"direct", "floor", *s.modes, *(["litellm"] if s.litellm else [])}
    rows: list[tuple[str, ...]] = []
    for c in s.concurrency:
        for stream in (False, True):
            for name in TARGET_ORDER:
                row = agg.get((name, c, stream))
                label = f"{name} (engine CPU)" if name == "direct" else name
                mode = "stream" if stream else "non-stream"
                if row is None:
                    if name in wanted or name in notes:
                        rows.append((label, mode, str(c), "n/a", *("-",) * (len(COLUMNS) - 4)))
                    continue
                rows.append(
                    (
                        label,
                        mode,
                        str(c),
                        _fmt(row["rps"], ".0f"),
                        _fmt(row["p50_ms"], ".2f"),
                        _fmt(row["p99_ms"], ".2f"),
                        _fmt(row["ttfb_p50_ms"], ".2f"),
                        _fmt(row["cpu_ms_per_req"], ".3f"),
                        _fmt(row["cpu_ms_per_chunk"], ".4f"),
                        _fmt(row["client_cpu_share"], ".0%"),
                        _fmt(row["other_cpu_share"], ".0%"),
                        str(row["errors"]),
                    )
                )
    return rows


def print_report(run: Run, agg: dict[tuple[str, int, bool], dict[str, Any]], checks: list[Verdict]) -> None:
    """The Rich table, the notes and the verdicts."""
    table = Table(title="Gateway overhead (medians over rounds)", header_style="bold")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("target", "mode") else "right")
    for row in table_rows(agg, run.settings, run.notes):
        table.add_row(*row)
    console.print(table)
    for name, why in run.notes.items():
        console.print(f"{name}: n/a ({escape(why)})")
    for line in [
        *redis_comparison(agg, run.settings),
        *floor_comparison(agg, run.settings),
        *base_comparison(agg, run.settings),
    ]:
        console.print(escape(line))
    for v in checks:
        colour = {True: "green", False: "red", None: "yellow"}[v.ok]
        console.print(f"[{colour}]{escape(v.line())}[/]")


def markdown_section(run: Run, agg: dict[tuple[str, int, bool], dict[str, Any]], checks: list[Verdict]) -> str:
    """The docs section: setup, machine, command, table, verdicts."""
    s, m = run.settings, run.meta
    gateways = " and ".join(f"`{mode}`" for mode in s.modes)
    lines = [
        SECTION,
        "",
        machine_line(m),
        "",
        f"Command: `{s.command}`",
        "",
        "Setup: a fake OpenAI engine (raw asyncio on uvloop, precomputed answers; a stream is "
        f"{fake_upstream.CONTENT_CHUNKS} content chunks + a finish chunk + a usage chunk when asked + `[DONE]`, "
        + ("all in one write" if s.burst else "one write per event, no delay")
        + f"), reached directly, through `floor` (bench/floor_proxy.py: the least a Python metering proxy does per "
        "request on uvloop: httptools both ways, the JSON body parsed and re-serialised, usage forced on and taken "
        "from the answer, a pooled keep-alive engine connection, a start and a finish line appended to an outbox "
        "file; none of fleetgate's features), "
        f"through `fleetgate up --engine ...` as {gateways}"
        + (
            f" and through LiteLLM proxy {m.get('litellm_version', '?')} (`litellm[proxy]` from PyPI, its default "
            "single uvicorn process, no database, access log off)"
            if s.litellm
            else ""
        )
        + ". Each gateway runs from defaults with its own fresh `FLEETGATE_STATE_DIR` (new SQLite database and "
        "outbox); `fleetgate` decides limits in-process (`limits.backend: memory`), `fleetgate-redis` in Redis "
        f"(`FLEETGATE_LIMITS__BACKEND=redis`, `{s.redis_url}`"
        + (f", Redis {m['redis_version']}" if m.get("redis_version") else "")
        + ", with `on_redis_error: fail_closed` so a Redis problem would show as errors rather than as in-process "
        "numbers under the Redis label). Before measuring, the benchmark gives the demo tenant limits through "
        f'`PUT /admin/tenants/demo` (`models: ["*"]`, {_limits_text(DEMO_LIMITS)}) and shows each gateway '
        "enforces them: with rpm 1 a request is refused with HTTP 429, with the high limits requests pass again. "
        "The fake model gets a price (0.10 / 0.20 per 1M input / output tokens), so every request also moves the "
        "budget counter. "
        f"A closed-loop aiohttp client in one process; the targets run back to back in each cell "
        f"({s.warmup:g} s warm-up, {s.duration:g} s measured), {s.rounds} round(s), medians shown. "
        "Client, engine and proxy share the same CPUs, so rates are relative, not absolute capacity. "
        "Latency is to the last byte (end of stream); TTFB is to the first body byte. "
        "CPU is utime+stime from /proc of the proxy's process tree (of the fake engine for `direct`) over the cell, "
        f"divided by requests and by chunks received ({EXPECTED_CHUNKS} per stream); for `fleetgate-redis` it does "
        "not include the Redis server (shown below the table). "
        "Client CPU is what the load generator used, other CPU what the rest of the machine used meanwhile "
        "(busy time from /proc/stat minus ours), both as a share of one core.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" if c in ("target", "mode") else "---:" for c in COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(agg, s, run.notes)]
    lines.append("")
    noise = max((row["other_cpu_share"] or 0.0) for row in agg.values()) if agg else 0.0
    if noise >= 0.25:
        lines += [
            f"Other processes used up to {noise:.0%} of a core during some cells (see `other CPU`); "
            "the targets were interleaved so that load hit all of them, but absolute numbers are noisier.",
            "",
        ]
    for name, why in run.notes.items():
        lines += [f"{name}: n/a ({why}).", ""]
    for mode, shown in run.checks.items():
        lines += [f"{mode} limits: {shown}.", ""]
    lines += [f"{line}.\n" for line in redis_comparison(agg, s)]
    lines += [f"{line}.\n" for line in floor_comparison(agg, s)]
    lines += [f"- {v.line(markdown=True)}" for v in checks]
    lines.append("")
    return "\n".join(lines)


def dump_json(path: Path, run: Run, agg: dict[tuple[str, int, bool], dict[str, Any]], checks: list[Verdict]) -> None:
    """Raw per-round numbers, medians and verdicts."""
    data = {
        "meta": run.meta,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(run.settings).items()},
        "notes": run.notes,
        "limit_checks": run.checks,
        "cells": [{**c.summary(), "cpu_role": ROLE_OF[c.target]} for c in run.cells],
        "medians": [{"target": k[0], "concurrency": k[1], "stream": k[2], **v} for k, v in sorted(agg.items())],
        "redis_comparison": redis_comparison(agg, run.settings),
        "base_comparison": base_comparison(agg, run.settings),
        "verdicts": [{"goal": v.goal, "measured": v.measured, "ok": v.ok} for v in checks],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    # Inside the loop, SIGTERM cancels the measurement (sessions close in order) instead of raising mid-callback.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_interrupt)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed (the client should cost as little CPU as it can); SIGTERM cancels it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_cancel_on_sigterm(coro))
    return uvloop.run(_cancel_on_sigterm(coro))


def start_gateways(run: Run, workdir: Path, upstream_port: int, children: list[Child]) -> list[tuple[str, int, int]]:
    """Start each gateway mode and prove its limits work; return (mode, pid, port) of those that run."""
    s = run.settings
    started: list[tuple[str, int, int]] = []
    for mode in s.modes:
        if mode == "fleetgate-redis":
            pid = redis_pid(s.redis_url)
            if pid is None:
                run.notes[mode] = f"Redis at {s.redis_url} unreachable"
                console.print(f"[yellow]{mode}: {escape(run.notes[mode])}; reporting n/a for it[/]")
                continue
            with redis_client(s.redis_url) as client:
                run.meta["redis_version"] = client.info("server").get("redis_version")
            run.meta["redis_pid"] = pid
        gateway, port = start_gateway(workdir, upstream_port, mode, s.redis_url, s.base_src)
        children.append(gateway)
        console.print(f"{mode}: pid {gateway.pid} on :{port}, state in {workdir / mode}")
        tenant_id, run.checks[mode] = configure_limits(mode, port)
        run.meta.setdefault("demo_tenant_ids", {})[mode] = tenant_id
        started.append((mode, gateway.pid, port))
    return started


def main(argv: Sequence[str] | None = None) -> int:
    """Start the fake engine, the gateways and LiteLLM, measure, report, and stop them all."""
    settings = parse_args(argv)
    if settings.plot_from is not None:
        console.print(escape(publish_plot(plots.load(settings.plot_from), settings.docs_path)))
        return 0
    # SIGTERM unwinds like Ctrl-C, through the finally below that stops every child.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run = Run(settings, machine_info(("aiohttp", "uvicorn", "starlette", "uvloop", "httptools", "redis")))
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-bench-"))
    children: list[Child] = []
    failed = True
    try:
        litellm_python: Path | None = None
        if settings.litellm:
            try:
                litellm_python = ensure_venv(
                    settings.litellm_venv, lambda msg: console.print(f"litellm: {escape(msg)}")
                )
                run.meta["litellm_version"] = installed_version(settings.litellm_venv)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                run.notes["litellm"] = f"could not be installed: {str(exc).strip().splitlines()[0][:200]}"
                console.print(f"[yellow]LiteLLM {escape(run.notes['litellm'])}[/]")
        else:
            run.notes["litellm"] = "skipped (--no-litellm or --quick)"
        upstream, upstream_port = start_upstream(workdir, settings.burst)
        children.append(upstream)
        console.print(f"fake engine: pid {upstream.pid} on :{upstream_port}")
        targets = [Target("direct", f"http://127.0.0.1:{upstream_port}", None, "engine")]
        roles = {"engine": upstream.pid}
        floor, floor_port = start_floor(workdir, upstream_port)
        children.append(floor)
        targets.append(Target("floor", f"http://127.0.0.1:{floor_port}", None, "floor"))
        roles["floor"] = floor.pid
        for mode, pid, port in start_gateways(run, workdir, upstream_port, children):
            targets.append(Target(mode, f"http://127.0.0.1:{port}", DEMO_KEY, ROLE_OF[mode]))
            roles[ROLE_OF[mode]] = pid
        if "redis_pid" in run.meta:
            roles["redis"] = int(run.meta["redis_pid"])  # CPU of the shared server, reported next to fleetgate-redis
        if litellm_python is not None:
            port = free_port()
            console.print("LiteLLM: starting (it imports a lot; this takes a while)")
            try:
                litellm = start_litellm(litellm_python, workdir, upstream_port, port)
            except StartError as exc:
                run.notes["litellm"] = f"could not be started: {str(exc).splitlines()[0][:200]}"
                console.print(f"[yellow]LiteLLM {escape(run.notes['litellm'])}[/]")
            else:
                children.append(litellm)
                targets.append(Target("litellm", f"http://127.0.0.1:{port}", MASTER_KEY, "litellm"))
                roles["litellm"] = litellm.pid
                console.print(f"LiteLLM {run.meta.get('litellm_version', '?')}: pid {litellm.pid} on :{port}")

        def probe() -> dict[str, float]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {
                **cpu_seconds(roles),
                "client": usage.ru_utime + usage.ru_stime,
                "client.sys": usage.ru_stime,
                "machine": machine_busy_seconds(),
            }

        run_async(measure(run, targets, upstream_port, probe))
        redis_tenant = run.meta.get("demo_tenant_ids", {}).get("fleetgate-redis")
        if redis_tenant is not None:
            # Evidence that the Redis limiter, not the in-process fallback, counted the run.
            spend = redis_spend(settings.redis_url, redis_tenant)
            run.checks["fleetgate-redis"] += f"; after the run Redis held {spend:,} micros of budget spend for it"
        failed = False
    except (StartError, RuntimeError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]interrupted; stopping everything[/]")
        return 130
    finally:
        for child in reversed(children):
            child.stop()
        redis_tenant = run.meta.get("demo_tenant_ids", {}).get("fleetgate-redis")
        if redis_tenant is not None:
            try:
                console.print(f"removed {drop_redis_keys(settings.redis_url, redis_tenant)} limiter keys from Redis")
            except (redis.RedisError, OSError) as exc:
                console.print(f"[yellow]could not remove this run's limiter keys from Redis: {exc}[/]")
        if settings.keep_logs or failed:
            console.print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    run.meta["loadavg_end"] = os.getloadavg()
    agg = aggregate(run)
    checks = verdicts(agg, settings, run.notes)
    print_report(run, agg, checks)
    if settings.json_path is not None:
        dump_json(settings.json_path, run, agg, checks)
        console.print(f"raw numbers: {settings.json_path}")
    if settings.docs_path is not None:
        update_docs(settings.docs_path, SECTION, markdown_section(run, agg, checks))
        console.print(f"updated {settings.docs_path}")
        medians = [{"target": k[0], "concurrency": k[1], "stream": k[2], **v} for k, v in sorted(agg.items())]
        data = {"meta": run.meta, "settings": vars(settings), "medians": medians}
        console.print(escape(publish_plot(data, settings.docs_path)))
    return 0


def publish_plot(data: dict[str, Any], docs: Path | None) -> str:
    """plots/overhead.png next to the docs (linked below this section's table); without docs, in docs/plots/."""
    return plots.publish(
        "overhead",
        plots.overhead_figure,
        data,
        docs or DEFAULT_DOCS,
        SECTION,
        "Gateway overhead: req/s, p50 and p99 latency per target, mode and concurrency",
        link=docs is not None,
    )


if __name__ == "__main__":
    sys.exit(main())
