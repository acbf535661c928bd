"""Overload: a quiet tenant's TTFT next to a noisy one at 10x its share, and the gateway's memory under a flood.

Real processes on 127.0.0.1: 2 `sim-engine` replicas (profile smollm2-llamacpp-local, 5x real time, 2 sequences
each) behind one `fleetgate up --engine ... --engine ...` gateway (admission: 2 in flight per replica, a queue of
20, 5 s deadlines). Two tenants of weight 1 are created through the admin API.

1. Fairness: the quiet tenant sends a steady open-loop trickle (5 req/s, streamed) alone, then while the noisy
   tenant keeps 10x its share of the fleet in flight (20 closed-loop workers; its fair share is 2 of the 4 slots),
   then (control) while the noisy tenant keeps exactly its share in flight. Target: the quiet tenant's TTFT p99
   under the noisy load is within 2x of its p99 alone. For contrast, the same gateway with the reserve for
   tenants under their share turned off (plain work-conserving DRR) runs the first two phases. The engines'
   own queues (vllm:num_requests_waiting) are sampled meanwhile: admission should keep them empty.
2. Memory (default settings): a separate load-generator process offers ~1,000 req/s of the noisy tenant (open
   loop, at most 512 outstanding) for --duration seconds, far beyond the fleet's capacity, while the quiet
   trickle goes on. The gateway's VmRSS is sampled from /proc every 0.25 s (start, peak, end, 5 s after) and its
   VmHWM read at the end. Target: memory stays flat (at most +5 MB over the flood's second half: no trend; peak
   within +25% of the RSS at the flood's start: a bounded working set).

Usage: .venv/bin/python bench/overload.py [--duration 60] [--phase 30] [--rate 1000] [--json PATH] [--note TEXT]
       .venv/bin/python bench/overload.py --report-from PATH [--note TEXT]   (publish a saved --json run again)
       --no-docs prints only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from bench_keys import ADMIN_KEY, KEY_ENV
from fleetgate.config import AdmissionConfig
from fleetgate.scheduling.reserve import ShareReserve
from fleetgate.tenancy.policy import estimate_input_tokens
from loadgen import percentile
from procs import CLK_TCK, Child, cpu_seconds, free_port, start, wait_ready
from report import DEFAULT_DOCS, command_line, loadavg, machine_info, machine_line, update_docs

SECTION = "## Overload (bench/overload.py)"
DEFAULTS = AdmissionConfig()
DEFAULT_QUANTUM = DEFAULTS.quantum
RESERVE_OFF = {"FLEETGATE_ADMISSION__RESERVE_SLOTS": "0", "FLEETGATE_ADMISSION__RESERVE_FRACTION": "0"}
MODEL = "smollm2"
PROFILE = "smollm2-llamacpp-local"
REPLICAS = 2
SLOTS = 2  # the simulator's --max-num-seqs, and the gateway's max in flight per replica
FAIR_SHARE = REPLICAS * SLOTS // 2  # two tenants of equal weight
NOISY_WORKERS = 10 * FAIR_SHARE
MAX_QUEUE = 20
QUEUE_TIMEOUT = 5.0
CALL_TIMEOUT = 30.0  # every client call is bounded
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
STREAM_BODY = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": True})
PLAIN_BODY = orjson.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16})
PROMPT_ESTIMATE = estimate_input_tokens(orjson.loads(PLAIN_BODY))
REQUEST_COST = PROMPT_ESTIMATE + 16  # tokens admission charges per request here: the estimate plus max_tokens
TTFT_RATIO_TARGET = 2.0
RSS_TREND_TARGET_MB = 5.0  # flat: RSS grows at most this much over the flood's second half (no trend)
RSS_PEAK_TARGET = 0.25  # and the peak stays within +25% of the RSS at the flood's start (a bounded working set)
RATE_TARGET = 0.9  # the gateway answered at least 90% of the offered rate

T = TypeVar("T")
console = Console(highlight=False, width=220)


# ---------------------------------------------------------------------------------------------------- load worker
@dataclass
class LoadResult:
    """What one load generator saw: statuses, answer latencies, and how many it could not send."""

    mode: str
    elapsed: float = 0.0
    sent: int = 0
    skipped: int = 0  # open loop: due but not sent because max_outstanding were already in flight
    statuses: dict[str, int] = field(default_factory=dict)
    missing_retry_after: int = 0  # 429/503 without a Retry-After header
    per_second: list[int] = field(default_factory=list)  # answers per wall second
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # per status, p50 / p99 / max


async def _load(spec: dict[str, Any]) -> LoadResult:
    """Closed loop (`workers` clients, each retrying 0.1 s after a refusal) or open loop (`rate` req/s)."""
    url = spec["url"] + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {spec['key']}", "content-type": "application/json"}
    body = PLAIN_BODY if spec["mode"] == "open" else STREAM_BODY
    duration = float(spec["duration"])
    limit = int(spec.get("max_outstanding", 512))
    result = LoadResult(spec["mode"])
    statuses: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {}
    seconds: Counter[int] = Counter()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as http:

        async def one() -> int | str:
            began = loop.time()
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    async with http.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status: int | str = resp.status
                        if status in (429, 503) and "retry-after" not in resp.headers:
                            result.missing_retry_after += 1
            except TimeoutError:
                status = "timeout"
            except aiohttp.ClientError as exc:
                status = f"error {type(exc).__name__}"
            ended = loop.time()
            statuses[str(status)] += 1
            latencies.setdefault(str(status), []).append(ended - began)
            seconds[int(ended - t0)] += 1
            return status

        if spec["mode"] == "closed":

            async def worker() -> None:
                while loop.time() - t0 < duration:
                    result.sent += 1
                    if await one() != 200:
                        await asyncio.sleep(0.1)

            await asyncio.gather(*(worker() for _ in range(int(spec["workers"]))))
        else:
            rate = float(spec["rate"])
            tasks: set[asyncio.Task[int | str]] = set()
            issued = 0
            while (now := loop.time() - t0) < duration:
                for _ in range(int(now * rate) - issued):
                    issued += 1
                    if len(tasks) >= limit:
                        result.skipped += 1
                        continue
                    result.sent += 1
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.sleep(0.002)
            if tasks:
                await asyncio.wait(tasks, timeout=CALL_TIMEOUT + 5)
    result.elapsed = loop.time() - t0
    result.statuses = dict(statuses)
    result.per_second = [seconds.get(s, 0) for s in range(int(duration))]
    result.latency_ms = {
        k: [percentile(v, 50) * 1e3, percentile(v, 99) * 1e3, max(v) * 1e3] for k, v in latencies.items()
    }
    return result


def load_worker_main(spec_path: Path) -> int:
    """Entry point of the load-generator process: read the spec, run, write the result next to it."""
    spec = json.loads(spec_path.read_text())
    result = run_async(_load(spec))
    Path(spec["out"]).write_text(json.dumps(asdict(result)))
    return 0


# ---------------------------------------------------------------------------------------------------- measuring
@dataclass
class Trickle:
    """The quiet tenant's requests in one phase."""

    ttft: list[float] = field(default_factory=list)  # seconds to the first content token, 200s only
    statuses: dict[str, int] = field(default_factory=dict)

    def p(self, pct: float) -> float:
        """A TTFT percentile in ms."""
        return percentile(self.ttft, pct) * 1e3


@dataclass
class Phase:
    """One measured stretch: the quiet trickle, the other load (if any) and CPU use."""

    name: str
    seconds: float
    quiet: Trickle
    load: LoadResult | None = None
    gateway_cpu: float = 0.0  # share of one core
    machine_busy: float = 0.0  # busy share of all CPUs together, in cores
    other_cpu: float = 0.0  # cores used by processes this benchmark did not start (noise)
    engine_waiting: list[int] = field(default_factory=list)  # the longest engine queue, sampled every 0.1 s

    def engine_queue(self) -> str:
        """How often an engine had requests waiting in its own queue, and the most seen."""
        samples = self.engine_waiting
        if not samples:
            return "-"
        return f"{sum(1 for w in samples if w) / len(samples):.0%} / {max(samples)}"


@dataclass
class ConfigRun:
    """Everything measured against one gateway configuration."""

    label: str
    env: dict[str, str]  # admission settings over the gateway's defaults
    full: bool = True  # every phase (control and flood too), or only alone and noisy
    phases: dict[str, Phase] = field(default_factory=dict)
    shed: dict[str, float] = field(default_factory=dict)  # fleetgate_shed_total by reason, at the end
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (t, VmRSS kB, VmHWM kB)
    flood_window: tuple[float, float] | None = None


async def _quiet_call(http: aiohttp.ClientSession, url: str, key: str) -> tuple[str, float | None]:
    """One streamed request; its status and seconds to the first chunk carrying content."""
    began = time.perf_counter()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            async with http.post(f"{url}/v1/chat/completions", data=STREAM_BODY, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    return str(resp.status), None
                ttft = None
                async for line in resp.content:
                    if ttft is None and line.startswith(b"data: {"):
                        chunk = orjson.loads(line[6:])
                        if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                            ttft = time.perf_counter() - began
                return ("200", ttft) if ttft is not None else ("200 without content", None)
    except TimeoutError:
        return "timeout", None
    except aiohttp.ClientError as exc:
        return f"error {type(exc).__name__}", None


async def _trickle(http: aiohttp.ClientSession, url: str, key: str, rate: float, seconds: float) -> Trickle:
    """Open loop: a quiet request every 1/rate s for `seconds`, not waiting for answers."""
    tasks = []
    t0 = time.perf_counter()
    n = 0
    while (now := time.perf_counter() - t0) < seconds:
        if now >= n / rate:
            n += 1
            tasks.append(asyncio.create_task(_quiet_call(http, url, key)))
        await asyncio.sleep(min(0.005, max(0.0, n / rate - now)))
    out = Trickle()
    statuses: Counter[str] = Counter()
    for status, ttft in await asyncio.gather(*tasks):
        statuses[status] += 1
        if ttft is not None:
            out.ttft.append(ttft)
    out.statuses = dict(statuses)
    return out


async def _sample_engine_queues(http: aiohttp.ClientSession, engines: list[str], out: list[int]) -> None:
    """The longest `vllm:num_requests_waiting` among the engines, every 0.1 s until cancelled."""
    while True:
        longest = 0
        for engine in engines:
            try:
                async with asyncio.timeout(2.0), http.get(f"{engine}/metrics") as resp:
                    text = await resp.text()
            except (TimeoutError, aiohttp.ClientError):
                continue
            for line in text.splitlines():
                if line.startswith("vllm:num_requests_waiting"):
                    longest = max(longest, int(float(line.rsplit(" ", 1)[1])))
        out.append(longest)
        await asyncio.sleep(0.1)


async def _sample_rss(pid: int, samples: list[tuple[float, int, int]], t0: float) -> None:
    """VmRSS and VmHWM of `pid` every 0.25 s until cancelled."""
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            return
        samples.append((time.monotonic() - t0, int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])))
        await asyncio.sleep(0.25)


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds all CPUs were busy since boot, and the part of it spent in irq, softirq and steal (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, (irq + softirq + steal) / CLK_TCK


def _own_cpu() -> float:
    """CPU seconds of this process and of its children already reaped (the load generators)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


async def _admin(http: aiohttp.ClientSession, url: str, tenant: str) -> str:
    """Create a tenant of weight 1 and a key for it; the key."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with http.put(f"{url}/admin/tenants/{tenant}", json={"weight": 1}, headers=headers) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"PUT /admin/tenants/{tenant}: {resp.status} {await resp.text()}")
    async with http.post(f"{url}/admin/tenants/{tenant}/keys", json={}, headers=headers) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST /admin/tenants/{tenant}/keys: {resp.status} {await resp.text()}")
        return str((await resp.json())["key"])


async def _shed(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """fleetgate_shed_total by reason, from the gateway's /metrics."""
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("fleetgate_shed_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Settings:
    """Command-line settings."""

    duration: float
    phase: float
    rate: float
    quiet_rate: float
    docs: Path | None
    json_path: Path | None


class Bench:
    """Starts the processes, measures the phases, and stops every process it started."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.workdir = workdir
        self.children: list[Child] = []
        self.engines: list[str] = []
        self.sim_pids: list[int] = []

    def start_engines(self) -> None:
        """The two simulated replicas."""
        for index in range(REPLICAS):
            port = free_port()
            args = [sys.executable, "-m", "fleetgate.cli.sim", "--port", str(port), "--profile", PROFILE]
            args += ["--time-scale", "5", "--max-num-seqs", str(SLOTS)]
            child = start(f"sim{index}", args, self.workdir / f"sim{index}.log")
            self.children.append(child)
            wait_ready(child, f"http://127.0.0.1:{port}/health", 30)
            self.engines.append(f"http://127.0.0.1:{port}")
            self.sim_pids.append(child.pid)

    def start_gateway(self, label: str, extra_env: dict[str, str]) -> tuple[Child, str]:
        """`fleetgate up` in front of the engines with its own state dir; ready when it sees both replicas."""
        port = free_port()
        state = self.workdir / f"gw-{label}"
        env = {
            **os.environ,
            "FLEETGATE_STATE_DIR": str(state),
            "FLEETGATE_RUN_DIR": str(state / "run"),
            **KEY_ENV,
            "FLEETGATE_ADMISSION__MAX_IN_FLIGHT_PER_REPLICA": str(SLOTS),
            "FLEETGATE_ADMISSION__MAX_QUEUE": str(MAX_QUEUE),
            "FLEETGATE_ADMISSION__QUEUE_TIMEOUT": "{interactive: %g, standard: %g, batch: %g}" % ((QUEUE_TIMEOUT,) * 3),
        }
        env.update(extra_env)
        args = [sys.executable, "-m", "fleetgate.cli.main", "up", "--port", str(port), "--no-self-test"]
        args += [a for url in self.engines for a in ("--engine", url)]
        child = start(f"gateway-{label}", args, self.workdir / f"gateway-{label}.log", env=env)
        self.children.append(child)
        url = f"http://127.0.0.1:{port}"
        wait_ready(child, f"{url}/readyz", 60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                body = resp.read()
            if all(f"engine-{i}".encode() in body for i in range(REPLICAS)):
                return child, url
            time.sleep(0.1)
        raise RuntimeError(f"gateway {label} never saw both replicas healthy; log {child.log_path}")

    def load_process(self, name: str, spec: dict[str, Any]) -> tuple[Child, Path]:
        """Start a load-generator process; its result lands in the returned path."""
        spec_path = self.workdir / f"{name}.spec.json"
        out = self.workdir / f"{name}.result.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out)}))
        child = start(name, [sys.executable, __file__, "--load-worker", str(spec_path)], self.workdir / f"{name}.log")
        self.children.append(child)
        return child, out

    async def phase(
        self, http: aiohttp.ClientSession, name: str, url: str, quiet_key: str, gw_pid: int, load: dict[str, Any] | None
    ) -> Phase:
        """A quiet trickle for --phase (or --duration for the flood) seconds, with an optional other load."""
        seconds = self.s.duration if name == "flood" else self.s.phase
        roles = {"gateway": gw_pid, **{f"sim{i}": pid for i, pid in enumerate(self.sim_pids)}}
        # CPU is counted from before the load starts until it was reaped, so its own CPU is in RUSAGE_CHILDREN.
        cpu0, (busy0, irq0), t0, mine0 = cpu_seconds(roles), _machine_cpu(), time.monotonic(), _own_cpu()
        child = out = None
        if load is not None:
            child, out = self.load_process(f"load-{name}-{gw_pid}", {**load, "duration": seconds + 1.0})
            await asyncio.sleep(1.0)  # the load ramps up (and its interpreter starts) before the quiet trickle
        began = time.monotonic()
        waiting: list[int] = []
        sampler = asyncio.create_task(_sample_engine_queues(http, self.engines, waiting))
        try:
            quiet = await _trickle(http, url, quiet_key, self.s.quiet_rate, seconds)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        elapsed = time.monotonic() - began
        result = None
        if child is not None and out is not None:
            await asyncio.to_thread(child.proc.wait, CALL_TIMEOUT + 30)
            child.stop()
            result = LoadResult(**json.loads(out.read_text()))
        cpu1, (busy1, irq1), mine1 = cpu_seconds(roles), _machine_cpu(), _own_cpu()
        window = time.monotonic() - t0
        ours = sum(cpu1[r] - cpu0[r] for r in roles) + mine1 - mine0
        return Phase(
            name,
            elapsed,
            quiet,
            result,
            gateway_cpu=(cpu1["gateway"] - cpu0["gateway"]) / window,
            machine_busy=(busy1 - busy0) / window,
            other_cpu=max(0.0, (busy1 - busy0) - (irq1 - irq0) - ours) / window,
            engine_waiting=waiting,
        )

    async def measure(self, run: ConfigRun, url: str, gw_pid: int) -> None:
        """Alone, then next to the noisy tenant, then under the flood, with RSS sampled throughout."""
        t0 = time.monotonic()
        sampler = asyncio.create_task(_sample_rss(gw_pid, run.rss, t0))
        connector = aiohttp.TCPConnector(limit=200)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)
            ) as http:
                quiet = await _admin(http, url, "quiet")
                noisy = await _admin(http, url, "noisy")
                await _trickle(http, url, quiet, self.s.quiet_rate, 2.0)  # warm-up, not measured
                console.print(f"[{run.label}] quiet alone, {self.s.phase:.0f} s")
                run.phases["alone"] = await self.phase(http, "alone", url, quiet, gw_pid, None)
                console.print(f"[{run.label}] quiet next to noisy x{NOISY_WORKERS} closed loop, {self.s.phase:.0f} s")
                closed = {"mode": "closed", "url": url, "key": noisy, "workers": NOISY_WORKERS}
                run.phases["noisy"] = await self.phase(http, "noisy", url, quiet, gw_pid, closed)
                if run.full:
                    # Control: the noisy tenant at exactly its share leaves a slot free for the quiet one most of
                    # the time, so this shows how much of the TTFT rise is waiting for a slot at saturation.
                    console.print(f"[{run.label}] quiet next to noisy x{FAIR_SHARE} (its share), {self.s.phase:.0f} s")
                    share = {**closed, "workers": FAIR_SHARE}
                    run.phases["noisy-1x"] = await self.phase(http, "noisy-1x", url, quiet, gw_pid, share)
                if run.full:
                    console.print(f"[{run.label}] flood {self.s.rate:.0f} req/s open loop, {self.s.duration:.0f} s")
                    spec = {"mode": "open", "url": url, "key": noisy, "rate": self.s.rate, "max_outstanding": 512}
                    started = time.monotonic() - t0
                    # the window starts when the load is running (the phase waits 1 s for it to ramp up)
                    run.phases["flood"] = await self.phase(http, "flood", url, quiet, gw_pid, spec)
                    run.flood_window = (started + 1.0, started + 1.0 + run.phases["flood"].seconds)
                    await asyncio.sleep(5.0)  # RSS after the flood, once the gateway settled
                run.shed = await _shed(http, url)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)

    def stop_all(self) -> None:
        """Stop every child by PID, newest first."""
        for child in reversed(self.children):
            child.stop()


# ---------------------------------------------------------------------------------------------------- reporting
def _rss_at(samples: list[tuple[float, int, int]], t: float) -> int:
    """VmRSS (kB) of the last sample at or before `t` (the first sample if none)."""
    before = [s for s in samples if s[0] <= t]
    return (before[-1] if before else samples[0])[1]


def memory_summary(run: ConfigRun) -> dict[str, float]:
    """RSS in MB at the flood's start, its peak and end, 5 s after, the lifetime VmHWM, and growth ratios."""
    assert run.flood_window is not None and run.rss
    a, b = run.flood_window
    inside = [s for s in run.rss if a <= s[0] <= b]
    start_kb, end_kb = _rss_at(run.rss, a), _rss_at(run.rss, b)
    peak_kb = max(s[1] for s in inside) if inside else end_kb
    mid_kb = _rss_at(run.rss, (a + b) / 2)
    return {
        "gateway_start_mb": run.rss[0][1] / 1024,
        "start_mb": start_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "end_mb": end_kb / 1024,
        "after_mb": run.rss[-1][1] / 1024,
        "hwm_mb": run.rss[-1][2] / 1024,
        "end_growth": end_kb / start_kb - 1,
        "peak_growth": peak_kb / start_kb - 1,
        "second_half_mb": (end_kb - mid_kb) / 1024,
        "samples": len(inside),
    }


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "-"


def fairness_rows(runs: list[ConfigRun]) -> list[list[str]]:
    """One row per (config, phase): quiet TTFT and statuses, the other load, CPU."""
    rows = []
    for run in runs:
        for phase in run.phases.values():
            load = phase.load
            rows.append(
                [
                    run.label,
                    phase.name,
                    str(len(phase.quiet.ttft)),
                    f"{phase.quiet.p(50):.1f}",
                    f"{phase.quiet.p(99):.1f}",
                    f"{max(phase.quiet.ttft) * 1e3:.1f}" if phase.quiet.ttft else "-",
                    _statuses(phase.quiet.statuses),
                    f"{load.sent / load.elapsed:,.0f}" if load else "-",
                    _statuses(load.statuses) if load else "-",
                    phase.engine_queue(),
                    f"{phase.gateway_cpu:.0%}",
                    f"{phase.machine_busy:.2f}",
                    f"{phase.other_cpu:.2f}",
                ]
            )
    return rows


FAIRNESS_HEAD = [
    "gateway",
    "phase",
    "quiet n",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "TTFT max ms",
    "quiet statuses",
    "other req/s sent",
    "other statuses",
    "engine queue (time non-empty / max)",
    "gateway CPU",
    "machine busy (cores)",
    "other CPU (cores)",
]


def verdicts(runs: list[ConfigRun], rate: float) -> list[str]:
    """PASS/FAIL lines for every target."""
    lines = []
    for run in runs:
        alone, noisy = run.phases["alone"], run.phases["noisy"]
        ratio = noisy.quiet.p(99) / alone.quiet.p(99)
        shed = sum(v for k, v in noisy.quiet.statuses.items() if k != "200")
        ok = ratio <= TTFT_RATIO_TARGET and shed == 0
        lines.append(
            f"**{'PASS' if ok else 'FAIL'}** {run.label}: quiet TTFT p99 next to the noisy tenant within "
            f"{TTFT_RATIO_TARGET:g}x of alone: {noisy.quiet.p(99):.1f} ms vs {alone.quiet.p(99):.1f} ms = "
            f"{ratio:.2f}x; quiet requests not served: {shed}"
        )
        load = noisy.load
        if load is not None:
            bad = {k: v for k, v in load.statuses.items() if k not in ("200", "429", "503")}
            lines.append(
                f"**{'PASS' if not bad and not load.missing_retry_after else 'FAIL'}** {run.label}: the noisy "
                f"excess was queued or refused on purpose ({_statuses(load.statuses)}), never a 500, an error or a "
                f"hang; refusals without Retry-After: {load.missing_retry_after}"
            )
        if "flood" in run.phases:
            mem = memory_summary(run)
            flood = run.phases["flood"].load
            ok = mem["second_half_mb"] <= RSS_TREND_TARGET_MB and mem["peak_growth"] <= RSS_PEAK_TARGET
            lines.append(
                f"**{'PASS' if ok else 'FAIL'}** {run.label}: gateway memory flat under the flood (at most "
                f"+{RSS_TREND_TARGET_MB:g} MB over its second half, peak within +{RSS_PEAK_TARGET:.0%} of its start): "
                f"RSS {mem['start_mb']:.1f} MB "
                f"at start, peak {mem['peak_mb']:.1f} MB ({mem['peak_growth']:+.1%}), {mem['end_mb']:.1f} MB at end "
                f"({mem['end_growth']:+.1%}; {mem['second_half_mb']:+.1f} MB over the second half), "
                f"{mem['after_mb']:.1f} MB 5 s later; VmHWM {mem['hwm_mb']:.1f} MB"
            )
            if flood is not None:
                per_s = sorted(flood.per_second[1:-1]) or [0]  # whole seconds of the flood, ramp and tail left out
                answered = per_s[len(per_s) // 2]
                refused = answered * (flood.statuses.get("429", 0) + flood.statuses.get("503", 0)) / flood.sent
                bad = {k: v for k, v in flood.statuses.items() if k not in ("200", "429", "503")}
                ok = answered >= RATE_TARGET * rate and not bad and not flood.missing_retry_after
                lines.append(
                    f"**{'PASS' if ok else 'FAIL'}** {run.label}: the gateway answered the offered {rate:,.0f} req/s "
                    f"(at least {RATE_TARGET:.0%}) with 200/429/503 only: {answered:,.0f} req/s answered "
                    f"(median second), of which {refused:,.0f} req/s refused, {flood.skipped:,} due requests not sent "
                    f"because 512 were outstanding; other outcomes {_statuses(bad)}; refusals without Retry-After: "
                    f"{flood.missing_retry_after}"
                )
    return lines


def _flood_values(run: ConfigRun) -> dict[str, str]:
    """The flood's numbers of one gateway, by what they are."""
    flood = run.phases["flood"]
    load = flood.load
    assert load is not None
    mem = memory_summary(run)
    per_s = sorted(load.per_second[1:-1]) or [0]
    values = {
        "offered / sent": f"{load.sent + load.skipped:,} / {load.sent:,} in {load.elapsed:.1f} s",
        "answered per second (min / median / max)": f"{per_s[0]:,} / {per_s[len(per_s) // 2]:,} / {per_s[-1]:,}",
        "flood statuses": _statuses(load.statuses),
    }
    for status, (p50, p99, top) in sorted(load.latency_ms.items()):
        values[f"flood latency of {status} (p50 / p99 / max)"] = f"{p50:.1f} / {p99:.1f} / {top:.1f} ms"
    values.update(
        {
            "quiet TTFT during the flood (p50 / p99)": f"{flood.quiet.p(50):.1f} / {flood.quiet.p(99):.1f} ms",
            "quiet statuses during the flood": _statuses(flood.quiet.statuses),
            "gateway CPU / machine busy / other CPU": (
                f"{flood.gateway_cpu:.0%} of a core / {flood.machine_busy:.2f} / {flood.other_cpu:.2f} cores"
            ),
            "gateway RSS after start-up": f"{mem['gateway_start_mb']:.1f} MB",
            "gateway RSS at flood start / peak / end": (
                f"{mem['start_mb']:.1f} / {mem['peak_mb']:.1f} / {mem['end_mb']:.1f} MB"
            ),
            "gateway RSS every 10 s of the flood": " / ".join(f"{mb:.1f}" for mb in rss_trajectory(run)) + " MB",
            "gateway RSS 5 s after the flood; VmHWM": f"{mem['after_mb']:.1f} MB; {mem['hwm_mb']:.1f} MB",
            "RSS samples during the flood": str(mem["samples"]),
        }
    )
    return values


def rss_trajectory(run: ConfigRun, step: float = 10.0) -> list[float]:
    """VmRSS in MB at the flood's start and every `step` seconds of it, and at its end."""
    assert run.flood_window is not None
    a, b = run.flood_window
    marks = [a + step * i for i in range(int((b - a) // step) + 1)]
    if b - marks[-1] > 1.0:
        marks.append(b)
    return [_rss_at(run.rss, t) / 1024 for t in marks]


def flood_table(runs: list[ConfigRun]) -> tuple[list[str], list[list[str]]]:
    """The flood's numbers, one column per gateway."""
    runs = [r for r in runs if "flood" in r.phases]
    values = [_flood_values(r) for r in runs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    return ["flood", *(r.label for r in runs)], [[k, *(v.get(k, "-") for v in values)] for k in keys]


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def print_report(runs: list[ConfigRun], rate: float) -> None:
    """The tables and verdicts on the console."""
    table = Table(title="quiet tenant TTFT (ms)")
    for h in FAIRNESS_HEAD:
        table.add_column(h)
    for row in fairness_rows(runs):
        table.add_row(*row)
    console.print(table)
    head, rows = flood_table(runs)
    flood = Table(title="flood")
    for h in head:
        flood.add_column(h)
    for row in rows:
        flood.add_row(*row)
    console.print(flood)
    for line in verdicts(runs, rate):
        console.print(line.replace("**", ""))


def docs_section(runs: list[ConfigRun], s: Settings, meta: dict[str, Any]) -> str:
    """The Markdown section for docs/benchmarks.md."""
    held = ShareReserve(DEFAULTS.reserve_slots, DEFAULTS.reserve_fraction).reserved(REPLICAS * SLOTS)
    setup = (
        f"Setup: {REPLICAS} `sim-engine` replicas (`python -m fleetgate.cli.sim --profile {PROFILE} --time-scale 5 "
        f"--max-num-seqs {SLOTS}`: the llama.cpp timing measured on this machine, run 5x faster) behind one "
        f"`fleetgate up --engine URL --engine URL --no-self-test` gateway with its own fresh state dir and "
        f"`FLEETGATE_ADMISSION__MAX_IN_FLIGHT_PER_REPLICA={SLOTS}`, `MAX_QUEUE={MAX_QUEUE}`, `QUEUE_TIMEOUT` "
        f"{QUEUE_TIMEOUT:g} s for every priority; fleet capacity is {REPLICAS * SLOTS} requests in flight. Two "
        f"tenants (`quiet`, `noisy`, weight 1, standard priority, no limits) are created through the admin API. "
        f"Requests are chat completions of `{MODEL}` with a {PROMPT_ESTIMATE}-token prompt estimate and "
        f"`max_tokens` 16. The quiet "
        f"tenant sends an open-loop trickle of {s.quiet_rate:g} streamed req/s from the benchmark process; its "
        f"TTFT is measured to the first SSE chunk carrying content. Phases: `alone` ({s.phase:g} s, after 2 s of "
        f"warm-up), `noisy` ({s.phase:g} s, while a separate process runs {NOISY_WORKERS} closed-loop streamed "
        f"clients of the noisy tenant = 10x its fair share of 2 slots, each retrying 0.1 s after a refusal), "
        f"`noisy-1x` ({s.phase:g} s, the same with {FAIR_SHARE} clients: exactly its share, a control for how much "
        f"of the TTFT rise is waiting for a slot at saturation), and `flood` ({s.duration:g} s, while a separate "
        f"process offers {s.rate:,.0f} non-streamed req/s of the noisy tenant open loop, at most 512 outstanding, "
        f"via aiohttp on uvloop). The gateway runs with the default admission settings otherwise: DRR quantum "
        f"{DEFAULT_QUANTUM} tokens, and the reserve (`reserve_slots` {DEFAULTS.reserve_slots}, `reserve_fraction` "
        f"{DEFAULTS.reserve_fraction:g}: here {held} "
        f"of the {REPLICAS * SLOTS} slots) that only tenants under their weighted share may take while another "
        f"tenant was active in the last {DEFAULTS.active_window:g} s; for contrast a second gateway with the "
        f"reserve off (`FLEETGATE_ADMISSION__RESERVE_SLOTS=0`, `RESERVE_FRACTION=0`: plain work-conserving DRR, "
        f"the previous behaviour) runs `alone` and `noisy` only. Engine queue is how much of the phase either "
        f"engine had requests waiting in its own queue (`vllm:num_requests_waiting` from its /metrics, sampled "
        f"every 0.1 s by the benchmark) and the most seen; the engines run `--max-num-seqs {SLOTS}`, the gateway "
        f"admits {SLOTS} per replica, so they stay near 0 (a request waits there until the engine's next step). "
        f"Gateway RSS is VmRSS from `/proc/<pid>/status` sampled every 0.25 s (VmHWM is the "
        f"process's lifetime peak). Gateway CPU is utime+stime of its process over the phase (from before the "
        f"other load starts until it ended); machine busy is the busy time of all CPUs (/proc/stat) in cores; "
        f"other CPU is machine busy minus irq, softirq and steal time minus what the gateway, the engines, the "
        f"benchmark and its load generators "
        f"used: processes this benchmark did not start (noise). Gateway, engines and clients share the same "
        f"{meta['nproc']} CPUs."
    )
    parts = [
        SECTION,
        "",
        machine_line(meta),
        "",
        f"Command: `{meta.get('command') or command_line()}`",
        "",
        setup,
        "",
        markdown_table(FAIRNESS_HEAD, fairness_rows(runs)),
        markdown_table(*flood_table(runs)),
        "Shed by the gateway (fleetgate_shed_total at the end): "
        + "; ".join(f"{r.label}: {_statuses({k: int(v) for k, v in r.shed.items()})}" for r in runs)
        + ".",
        "",
        *(f"- {line}" for line in verdicts(runs, s.rate)),
        "",
        *([reading(runs), ""] if "noisy-1x" in runs[0].phases else []),
        *([f"Machine: {meta['note']}", ""] if meta.get("note") else []),
    ]
    return "\n".join(parts)


def _served(phase: Phase) -> float:
    """Requests per second that got a 200 in a phase, both tenants."""
    assert phase.load is not None
    return phase.load.statuses.get("200", 0) / phase.load.elapsed + phase.quiet.statuses.get("200", 0) / phase.seconds


def reading(runs: list[ConfigRun]) -> str:
    """What the phases say about the TTFT target, from the numbers of the default run and the contrast."""
    run = runs[0]
    alone, noisy, share = (run.phases[k] for k in ("alone", "noisy", "noisy-1x"))
    assert noisy.load is not None
    slots = REPLICAS * SLOTS
    held = ShareReserve(DEFAULTS.reserve_slots, DEFAULTS.reserve_fraction).reserved(slots)
    text = "Reading:"
    contrast = next((r for r in runs[1:] if "noisy" in r.phases), None)
    if contrast is not None:
        c_alone, c_noisy = contrast.phases["alone"], contrast.phases["noisy"]
        served = _served(c_noisy)
        text += (
            f" without the reserve ({contrast.label}) the noisy tenant at 10x its share keeps all {slots} slots busy "
            f"({served:.1f} req/s went through, so a request held its slot about {slots / served * 1e3:.0f} ms); the "
            f"fair queue puts a quiet request first in line, but it still waits for the first running request to "
            f"end: quiet p99 {c_noisy.quiet.p(99):.1f} ms ({c_noisy.quiet.p(99) / c_alone.quiet.p(99):.2f}x its "
            f"{c_alone.quiet.p(99):.1f} ms alone)."
        )
    text += (
        f" With the reserve the noisy tenant may take {slots - held} of the {slots} slots while the quiet tenant is "
        f"active, so a quiet request finds a free slot on arrival, and the router's `has_room` filter sends it to "
        f"the replica that has it: quiet p99 {noisy.quiet.p(99):.1f} ms "
        f"({noisy.quiet.p(99) / alone.quiet.p(99):.2f}x alone; with the noisy tenant at exactly its share "
        f"{share.quiet.p(99):.1f} ms). What remains (p50 {alone.quiet.p(50):.1f} -> {noisy.quiet.p(50):.1f} ms) is "
        f"sharing an engine's batch with a noisy request: the quiet prefill waits for the running step and then "
        f"runs in a batch of two."
    )
    if contrast is not None:
        text += (
            f" The price is throughput while the reserved slot idles between quiet requests: {_served(noisy):.1f} "
            f"req/s served in all with the reserve vs {_served(contrast.phases['noisy']):.1f} without."
        )
    return text


def load_runs(path: Path) -> tuple[dict[str, Any], list[ConfigRun]]:
    """The meta data and runs of a `--json` file, for `--report-from`."""
    raw = json.loads(path.read_text())
    runs = []
    for r in raw["runs"]:
        phases = {}
        for name, ph in r["phases"].items():
            load = LoadResult(**ph["load"]) if ph["load"] is not None else None
            phases[name] = Phase(**{**ph, "quiet": Trickle(**ph["quiet"]), "load": load})
        window = tuple(r["flood_window"]) if r["flood_window"] is not None else None
        rss = [(t, rss_kb, hwm_kb) for t, rss_kb, hwm_kb in r["rss"]]
        r.pop("quantum", None)  # files from before the contrast was the reserve
        runs.append(ConfigRun(**{"env": {}, **r, "phases": phases, "rss": rss, "flood_window": window}))
    return raw["meta"], runs


# ---------------------------------------------------------------------------------------------------- main
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
    """Run on uvloop when installed (the clients should cost as little CPU as they can); SIGTERM cancels it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_cancel_on_sigterm(coro))
    return uvloop.run(_cancel_on_sigterm(coro))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of flood (default 60)")
    p.add_argument("--phase", type=float, default=30.0, help="seconds of each fairness phase (default 30)")
    p.add_argument("--rate", type=float, default=1000.0, help="flood req/s offered (default 1000)")
    p.add_argument("--quiet-rate", type=float, default=5.0, help="quiet tenant req/s (default 5)")
    p.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help=f"Markdown file to update (default {DEFAULT_DOCS})")
    p.add_argument("--no-docs", action="store_true", help="print only; leave the docs alone")
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write raw numbers to this JSON file")
    p.add_argument("--report-from", type=Path, default=None, help="print and publish a previous run's --json file")
    p.add_argument("--note", default=None, help="what else the machine was doing (docs)")
    p.add_argument("--load-worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the engines and gateways, measure, report, and stop every process started."""
    args = parse_args(argv)
    if args.load_worker is not None:
        return load_worker_main(args.load_worker)
    settings = Settings(
        args.duration, args.phase, args.rate, args.quiet_rate, None if args.no_docs else args.docs, args.json_path
    )
    if args.report_from is not None:
        saved_meta, saved_runs = load_runs(args.report_from)
        if args.note is not None:
            saved_meta["note"] = args.note
        saved = saved_meta["settings"]
        settings = Settings(saved["duration"], saved["phase"], saved["rate"], saved["quiet_rate"], settings.docs, None)
        publish(saved_runs, settings, saved_meta)
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    meta = machine_info(("aiohttp", "uvicorn", "uvloop"))
    meta["command"] = command_line()
    if args.note is not None:
        meta["note"] = args.note
    meta["settings"] = {
        "duration": args.duration,
        "phase": args.phase,
        "rate": args.rate,
        "quiet_rate": args.quiet_rate,
    }
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-overload-"))
    console.print(f"logs in {workdir}; load average {loadavg(meta['loadavg_start'])}")
    bench = Bench(settings, workdir)
    runs: list[ConfigRun] = []
    try:
        bench.start_engines()
        configs: tuple[tuple[str, dict[str, str], bool], ...] = (
            ("default", {}, True),
            ("reserve off (contrast)", RESERVE_OFF, False),
        )
        for index, (label, extra_env, full) in enumerate(configs):
            gateway, url = bench.start_gateway(f"gw{index}", extra_env)
            console.print(f"gateway {label}: pid {gateway.pid} at {url}")
            run = ConfigRun(label, extra_env, full)
            try:
                run_async(bench.measure(run, url, gateway.pid))
            finally:
                gateway.stop()
            runs.append(run)
    finally:
        bench.stop_all()
    meta["loadavg_end"] = os.getloadavg()
    if settings.json_path is not None:
        raw = {"meta": meta, "runs": [asdict(r) for r in runs]}
        settings.json_path.write_text(json.dumps(raw, default=str, indent=1))
    publish(runs, settings, meta)
    return 0


def publish(runs: list[ConfigRun], settings: Settings, meta: dict[str, Any]) -> None:
    """Print the report and, unless --no-docs, write its section of the docs."""
    print_report(runs, settings.rate)
    console.print(f"load average {loadavg(meta['loadavg_start'])} at start, {loadavg(meta['loadavg_end'])} at end")
    if runs and "noisy-1x" in runs[0].phases:
        console.print(reading(runs))
    if settings.docs is not None:
        update_docs(settings.docs, SECTION, docs_section(runs, settings, meta))
        console.print(f"updated {settings.docs}")


if __name__ == "__main__":
    sys.exit(main())
