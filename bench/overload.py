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
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

from harness import rest, runner
from harness.engines import start_sim_engines
from harness.gateway import Gateway, create_key, put_tenant, start_gateway
from harness.keys import ADMIN_KEY
from harness.procs import Child, Children, start
from harness.report import DEFAULT_DOCS, add_output_options, command_line, loadavg, machine_info, write_json
from harness.usage import cpu_seconds, machine_cpu, own_cpu
from overload_load import CALL_TIMEOUT, LoadResult, load_worker_main, sample_engine_queues, sample_rss, trickle
from overload_report import (
    FAIR_SHARE,
    MAX_QUEUE,
    NOISY_WORKERS,
    PROFILE,
    QUEUE_TIMEOUT,
    REPLICAS,
    RESERVE_OFF,
    SLOTS,
    ConfigRun,
    Phase,
    Settings,
    load_runs,
    publish,
)

console = runner.console(220)
ADMISSION_ENV = {
    "FLEETGATE_ADMISSION__MAX_IN_FLIGHT_PER_REPLICA": str(SLOTS),
    "FLEETGATE_ADMISSION__MAX_QUEUE": str(MAX_QUEUE),
    "FLEETGATE_ADMISSION__QUEUE_TIMEOUT": "{interactive: %g, standard: %g, batch: %g}" % ((QUEUE_TIMEOUT,) * 3),
}


class Bench:
    """Starts the processes, measures the phases, and stops every process it started."""

    def __init__(self, settings: Settings, workdir: Path, children: Children) -> None:
        self.s = settings
        self.workdir = workdir
        self.children = children
        self.engines: list[str] = []
        self.sim_pids: list[int] = []

    def start_engines(self) -> None:
        """The two simulated replicas."""
        args = ["--profile", PROFILE, "--time-scale", "5", "--max-num-seqs", str(SLOTS)]
        for child, url in start_sim_engines(self.workdir, "sim", REPLICAS, args, timeout=30):
            self.children.add(child)
            self.engines.append(url)
            self.sim_pids.append(child.pid)

    def start_gateway(self, label: str, extra_env: dict[str, str]) -> Gateway:
        """`fleetgate up` in front of the engines with its own state dir; ready when it sees both replicas."""
        gateway = start_gateway(
            self.workdir, f"gw-{label}", self.engines, {**ADMISSION_ENV, **extra_env}, healthy=REPLICAS
        )
        self.children.add(gateway.child)
        return gateway

    def load_process(self, name: str, spec: dict[str, Any]) -> tuple[Child, Path]:
        """Start a load-generator process; its result lands in the returned path."""
        spec_path = self.workdir / f"{name}.spec.json"
        out = self.workdir / f"{name}.result.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out)}))
        child = start(name, [sys.executable, __file__, "--load-worker", str(spec_path)], self.workdir / f"{name}.log")
        return self.children.add(child), out

    async def _other_load(self, name: str, gw_pid: int, load: dict[str, Any], seconds: float) -> tuple[Child, Path]:
        child, out = self.load_process(f"load-{name}-{gw_pid}", {**load, "duration": seconds + 1.0})
        await asyncio.sleep(1.0)  # the load ramps up (and its interpreter starts) before the quiet trickle
        return child, out

    async def phase(
        self, http: aiohttp.ClientSession, name: str, gateway: Gateway, quiet_key: str, load: dict[str, Any] | None
    ) -> Phase:
        """A quiet trickle for --phase (or --duration for the flood) seconds, with an optional other load."""
        seconds = self.s.duration if name == "flood" else self.s.phase
        roles = {"gateway": gateway.pid, **{f"sim{i}": pid for i, pid in enumerate(self.sim_pids)}}
        # CPU is counted from before the load starts until it was reaped, so its own CPU is in RUSAGE_CHILDREN.
        cpu0, (busy0, irq0), t0, mine0 = cpu_seconds(roles), machine_cpu(), time.monotonic(), own_cpu(True)[0]
        other = await self._other_load(name, gateway.pid, load, seconds) if load is not None else None
        began = time.monotonic()
        waiting: list[int] = []
        sampler = asyncio.create_task(sample_engine_queues(http, self.engines, waiting))
        try:
            quiet = await trickle(http, gateway.url, quiet_key, self.s.quiet_rate, seconds)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        elapsed = time.monotonic() - began
        result = None
        if other is not None:
            await asyncio.to_thread(other[0].proc.wait, CALL_TIMEOUT + 30)
            other[0].stop()
            result = LoadResult(**json.loads(other[1].read_text()))
        cpu1, (busy1, irq1), mine1 = cpu_seconds(roles), machine_cpu(), own_cpu(True)[0]
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

    async def phases(self, run: ConfigRun, http: aiohttp.ClientSession, gateway: Gateway, t0: float) -> None:
        """Alone, next to the noisy tenant, (full runs) next to it at its share and under the flood."""
        quiet, noisy = await asyncio.to_thread(_tenant_keys, gateway.url)
        await trickle(http, gateway.url, quiet, self.s.quiet_rate, 2.0)  # warm-up, not measured
        console.print(f"[{run.label}] quiet alone, {self.s.phase:.0f} s")
        run.phases["alone"] = await self.phase(http, "alone", gateway, quiet, None)
        console.print(f"[{run.label}] quiet next to noisy x{NOISY_WORKERS} closed loop, {self.s.phase:.0f} s")
        closed = {"mode": "closed", "url": gateway.url, "key": noisy, "workers": NOISY_WORKERS}
        run.phases["noisy"] = await self.phase(http, "noisy", gateway, quiet, closed)
        if not run.full:
            return
        # Control: the noisy tenant at exactly its share leaves a slot free for the quiet one most of the time,
        # so this shows how much of the TTFT rise is waiting for a slot at saturation.
        console.print(f"[{run.label}] quiet next to noisy x{FAIR_SHARE} (its share), {self.s.phase:.0f} s")
        run.phases["noisy-1x"] = await self.phase(http, "noisy-1x", gateway, quiet, {**closed, "workers": FAIR_SHARE})
        console.print(f"[{run.label}] flood {self.s.rate:.0f} req/s open loop, {self.s.duration:.0f} s")
        spec = {"mode": "open", "url": gateway.url, "key": noisy, "rate": self.s.rate, "max_outstanding": 512}
        started = time.monotonic() - t0
        # the window starts when the load is running (the phase waits 1 s for it to ramp up)
        run.phases["flood"] = await self.phase(http, "flood", gateway, quiet, spec)
        run.flood_window = (started + 1.0, started + 1.0 + run.phases["flood"].seconds)
        await asyncio.sleep(5.0)  # RSS after the flood, once the gateway settled

    async def measure(self, run: ConfigRun, gateway: Gateway) -> None:
        """Every phase of `run`, with the gateway's RSS sampled throughout; then what it shed."""
        t0 = time.monotonic()
        sampler = asyncio.create_task(sample_rss(gateway.pid, run.rss, t0))
        connector = aiohttp.TCPConnector(limit=200)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT)
            ) as http:
                await self.phases(run, http, gateway, t0)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        text = rest.metrics_text(f"{gateway.url}/metrics", key=ADMIN_KEY)  # /metrics names tenants: admin only
        if text is None:
            raise RuntimeError(f"{gateway.url}/metrics did not answer with the admin key")
        run.shed = {labels["reason"]: v for labels, v in rest.samples(text, "fleetgate_shed_total")}


def _tenant_keys(gateway_url: str) -> tuple[str, str]:
    """The quiet and the noisy tenant (weight 1 each) and a key of each."""
    keys = []
    for tenant in ("quiet", "noisy"):
        put_tenant(gateway_url, tenant, {"weight": 1})
        keys.append(create_key(gateway_url, tenant))
    return keys[0], keys[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of flood (default 60)")
    p.add_argument("--phase", type=float, default=30.0, help="seconds of each fairness phase (default 30)")
    p.add_argument("--rate", type=float, default=1000.0, help="flood req/s offered (default 1000)")
    p.add_argument("--quiet-rate", type=float, default=5.0, help="quiet tenant req/s (default 5)")
    add_output_options(p, plot=False)
    p.add_argument("--report-from", type=Path, default=None, help="print and publish a previous run's --json file")
    p.add_argument("--note", default=None, help="what else the machine was doing (docs)")
    p.add_argument("--load-worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def report_from(args: argparse.Namespace, docs: Path | None) -> int:
    """`--report-from`: print and publish a saved run."""
    saved_meta, saved_runs = load_runs(args.report_from)
    if args.note is not None:
        saved_meta["note"] = args.note
    saved = saved_meta["settings"]
    settings = Settings(saved["duration"], saved["phase"], saved["rate"], saved["quiet_rate"], docs, None)
    publish(console, saved_runs, settings, saved_meta)
    return 0


def measure_all(settings: Settings, workdir: Path) -> list[ConfigRun]:
    """The engines, then each gateway configuration in turn, measured; every process stopped by PID."""
    runs: list[ConfigRun] = []
    configs: tuple[tuple[str, dict[str, str], bool], ...] = (
        ("default", {}, True),
        ("reserve off (contrast)", RESERVE_OFF, False),
    )
    with Children() as children:
        bench = Bench(settings, workdir, children)
        bench.start_engines()
        for index, (label, extra_env, full) in enumerate(configs):
            gateway = bench.start_gateway(f"gw{index}", extra_env)
            console.print(f"gateway {label}: pid {gateway.pid} at {gateway.url}")
            run = ConfigRun(label, extra_env, full)
            try:
                runner.run_async(bench.measure(run, gateway))
            finally:
                gateway.child.stop()
            runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Start the engines and gateways, measure, report, and stop every process started."""
    args = parse_args(argv)
    if args.load_worker is not None:
        return load_worker_main(args.load_worker)
    docs = None if args.no_docs else args.docs or DEFAULT_DOCS
    if args.report_from is not None:
        return report_from(args, docs)
    settings = Settings(args.duration, args.phase, args.rate, args.quiet_rate, docs, args.json_path)
    runner.sigterm_interrupts()
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
    runs = measure_all(settings, workdir)
    meta["loadavg_end"] = os.getloadavg()
    if settings.json_path is not None:
        write_json(settings.json_path, {"meta": meta, "runs": [asdict(r) for r in runs]})
    publish(console, runs, settings, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
