"""Router micro-benchmark: the cost of one `score` decision at fleet scale, and the prefix index's memory bound.

1. Decision latency: 64 replicas (fresh engine metrics), a prefix index holding >= 100k blocks from multi-turn
   conversations of 16 tenants, then timed `pick()` calls (filters, hashing, scorers, tie-break, recording) for
   follow-up turns (80%) and new conversations (20%). The same run on an index of ~1k blocks shows the cost
   does not grow with the index. GC stays enabled (the gateway runs with it on).
2. Memory bound: a fresh index with the default 64 MB budget is fed 10x more distinct prompt blocks than fit;
   its real size is measured with tracemalloc (Python allocations of the index: OrderedDict, keys, holder
   dicts, floats) and compared with the budget and with its own accounting.

Usage: .venv/bin/python bench/router_micro.py [--decisions 20000] [--budget-mb 64] [--no-docs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plots
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.plugins import make_router
from fleetgate.routing.prefix_index import BLOCK_BYTES, PrefixIndex, PrefixSettings
from fleetgate.routing.request import route_request_from

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## Router micro-benchmark (bench/router_micro.py)"
TARGET_P99_US = 200.0
WORDS = [f"w{i}" for i in range(2000)] + ["the", "a", "of", "to", "and", "order", "refund", "shipping", "account"]


@dataclass
class Conversation:
    """One multi-turn chat of a tenant, whose history grows."""

    tenant: str
    session: str
    messages: list[dict[str, str]]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def _replicas(rng: random.Random, n: int) -> list[Replica]:
    now = time.monotonic()
    out = []
    for i in range(n):
        r = Replica(id=f"replica-{i:02d}", url=f"http://127.0.0.1:{20000 + i}", kind="vllm", models={"m"}, healthy=True)
        r.metrics = ReplicaMetrics(
            scraped_at=now, waiting=rng.randint(0, 3), running=rng.randint(0, 8), kv_usage=rng.uniform(0.1, 0.7)
        )
        r.in_flight = rng.randint(0, 4)
        out.append(r)
    return out


class Workload:
    """Seeded conversations: per-tenant system prompts (~1,600 chars), turns of ~300-900 chars."""

    def __init__(self, seed: int, tenants: int = 16) -> None:
        self.rng = random.Random(seed)
        self.systems = {f"tenant-{t}": _words(self.rng, 260) for t in range(tenants)}
        self.conversations: list[Conversation] = []

    def new(self) -> Conversation:
        tenant = self.rng.choice(list(self.systems))
        conv = Conversation(
            tenant, f"s{len(self.conversations)}", [{"role": "system", "content": self.systems[tenant]}]
        )
        self.conversations.append(conv)
        return self.turn(conv)

    def turn(self, conv: Conversation) -> Conversation:
        if len(conv.messages) > 14:  # keep prompts in a realistic band (~2-10k chars)
            del conv.messages[1:5]
        conv.messages.append({"role": "user", "content": _words(self.rng, self.rng.randint(40, 90))})
        return conv

    def reply(self, conv: Conversation) -> None:
        conv.messages.append({"role": "assistant", "content": _words(self.rng, self.rng.randint(40, 120))})

    def next(self, new_share: float = 0.2) -> Conversation:
        if not self.conversations or self.rng.random() < new_share:
            return self.new()
        return self.turn(self.rng.choice(self.conversations))


def _payload(conv: Conversation) -> dict[str, Any]:
    return {"model": "m", "messages": conv.messages, "user": conv.session}


def fill(router: RoutingPipeline, work: Workload, reps: list[Replica], blocks: int) -> None:
    """Route conversation turns until the index holds `blocks` blocks (replies appended as a chat would)."""
    while len(router.index) < blocks:
        conv = work.next()
        decision = router.pick(route_request_from(_payload(conv), conv.tenant, conv.session), reps)
        router.finish(decision, ok=True)
        work.reply(conv)
        # What the engine now holds: prompt + reply, recorded as the proxy may do after a turn.
        router.index.record(
            conv.tenant, route_request_from(_payload(conv), conv.tenant).prompt_text or "", decision.replica.id
        )


def time_decisions(router: RoutingPipeline, work: Workload, reps: list[Replica], n: int) -> dict[str, Any]:
    """Time `pick()` over n requests: wall clock and this thread's CPU time (which excludes preemption by other
    processes on a shared machine); request building timed apart."""
    walls: list[int] = []
    cpus: list[int] = []
    builds: list[int] = []
    blocks: list[int] = []
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    for _ in range(n):
        conv = work.next()
        t0 = clock()
        req = route_request_from(_payload(conv), conv.tenant, conv.session)
        t1 = clock()
        c1 = cpu()
        decision = router.pick(req, reps)
        c2 = cpu()
        t2 = clock()
        router.finish(decision, ok=True)
        work.reply(conv)
        builds.append(t1 - t0)
        walls.append(t2 - t1)
        cpus.append(c2 - c1)
        blocks.append(len(req.prompt_text or "") // router.index.settings.block_chars)
    return {"wall": _pcts(walls), "cpu": _pcts(cpus), "build": _pcts(builds), "blocks": statistics.mean(blocks)}


def _pcts(ns: list[int]) -> dict[str, float]:
    q = statistics.quantiles(ns, n=1000)
    return {"p50": q[499] / 1e3, "p90": q[899] / 1e3, "p99": q[989] / 1e3, "p999": q[998] / 1e3, "max": max(ns) / 1e3}


def _median_of(rounds: list[dict[str, Any]], kind: str) -> dict[str, float]:
    return {k: statistics.median(r[kind][k] for r in rounds) for k in rounds[0][kind]}


def decision_run(
    index_blocks: int, n: int, rounds: int, block_chars: int, seed: int
) -> tuple[dict[str, Any], RoutingPipeline]:
    """Fill an index to `index_blocks`, then time `rounds` x n decisions; percentiles are medians over rounds."""
    rng = random.Random(seed)
    reps = _replicas(rng, 64)
    router = make_router("score", {"seed": seed, "stale_after": 3600, "prefix": {"block_chars": block_chars}})
    work = Workload(seed)
    fill(router, work, reps, index_blocks)
    size_before = len(router.index)
    mb_before = router.index.bytes_used / 2**20
    router.stats.timings.clear()
    results = [time_decisions(router, work, reps, n) for _ in range(rounds)]
    return {
        "index_blocks": size_before,
        "index_mb": mb_before,
        "block_chars": block_chars,
        "n": n * rounds,
        "rounds": rounds,
        "blocks": statistics.mean(r["blocks"] for r in results),
        "wall": _median_of(results, "wall"),
        "cpu": _median_of(results, "cpu"),
        "build": _median_of(results, "build"),
        "wall_p99_rounds": [r["wall"]["p99"] for r in results],
    }, router


def memory_run(budget_mb: int, factor: int, seed: int) -> dict[str, Any]:
    """Feed `factor` x more distinct blocks than fit; tracemalloc the index."""
    budget = budget_mb * 2**20
    fits = budget // BLOCK_BYTES
    rng = random.Random(seed)
    replica_ids = [f"replica-{i:02d}" for i in range(64)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index = PrefixIndex(PrefixSettings(budget_bytes=budget))
    fed = 0
    peak_real = 0
    started = time.perf_counter()
    prompt_no = 0
    while fed < factor * fits:
        prompt_no += 1
        text = f"{prompt_no:>12} " + _words(rng, 300)  # ~1,900 chars: ~29 distinct blocks
        hashes = index.hashes(f"tenant-{prompt_no % 16}", text)
        index.record_hashes(hashes, replica_ids[prompt_no % 64])
        fed += len(hashes)
        if prompt_no % 2000 == 0:
            peak_real = max(peak_real, tracemalloc.get_traced_memory()[0] - base)
    gc.collect()
    real = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {
        "budget_mb": budget_mb,
        "fits_blocks": fits,
        "fed_blocks": fed,
        "kept_blocks": len(index),
        "evicted": index.evicted,
        "accounted_mb": index.bytes_used / 2**20,
        "real_mb": real / 2**20,
        "peak_real_mb": max(peak_real, real) / 2**20,
        "seconds": time.perf_counter() - started,
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def _la(v: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in v)


def render(
    m: dict[str, Any], runs: list[dict[str, Any]], plugins: dict[str, Any], mem: dict[str, Any], argv: str
) -> str:
    main_run = runs[1]
    ok_latency = main_run["wall"]["p99"] <= TARGET_P99_US
    ok_memory = mem["peak_real_mb"] <= mem["budget_mb"]
    lines = [
        SECTION,
        "",
        f"Measured {m['date']} on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}; load average "
        f"{_la(m['loadavg'])} at start, {_la(m['loadavg_end'])} at end (the machine is shared: other work ran).",
        "",
        f"Command: `{argv}`",
        "",
        "Setup: `score` policy (default weights), 64 healthy vLLM-kind replicas with fresh metrics, 16 tenants with "
        "~1,600-char system prompts, multi-turn conversations (history grows, replies appended and recorded, 20% "
        "new ones). One decision = `pick()`: 4 filters, prompt hashing, 6 scorers, tie-break, imbalance check, "
        "breaker claim, recording the blocks. `build` = `route_request_from` (rendering the messages), timed "
        "apart. GC on. Wall clock and the thread's CPU time (`time.thread_time_ns`, which leaves out time other "
        "processes took the CPU); each percentile is the median over the rounds. Microseconds.",
        "",
        "| index blocks | index MB | block chars | prompt blocks (mean) | decisions | wall p50 | wall p90 | wall p99 "
        "| wall p99.9 | CPU p50 | CPU p99 | build p50 | build p99 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        w, c, b = r["wall"], r["cpu"], r["build"]
        lines.append(
            f"| {r['index_blocks']:,} | {r['index_mb']:.1f} | {r['block_chars']} | {r['blocks']:.0f} | "
            f"{r['n']:,} ({r['rounds']} rounds) | {w['p50']:.1f} | {w['p90']:.1f} | {w['p99']:.1f} | {w['p999']:.1f} | "
            f"{c['p50']:.1f} | {c['p99']:.1f} | {b['p50']:.1f} | {b['p99']:.1f} |"
        )
    lines += ["", f"Mean µs per call by plugin (run 2: {main_run['index_blocks']:,} blocks):", ""]
    lines.append(", ".join(f"`{name}` {v['mean_us']:.1f}" for name, v in plugins.items()))
    rounds = ", ".join(f"{p:.0f}" for p in main_run["wall_p99_rounds"])
    lines += [
        "",
        f"Run 2's wall p99 per round: {rounds} µs. The index size barely moves the cost (run 1 vs 2): a decision is "
        "O(prompt blocks), not O(index). Run 3 is the same as run 2 with 64-character blocks: more blocks per "
        "prompt, more time per decision, for no better routing (why the default is 128).",
        "",
        f"Memory bound: budget {mem['budget_mb']} MB (~{mem['fits_blocks']:,} blocks at the accounted 400 B); fed "
        f"{mem['fed_blocks']:,} distinct blocks ({mem['fed_blocks'] / mem['fits_blocks']:.1f}x what fits) in "
        f"{mem['seconds']:.0f} s; kept {mem['kept_blocks']:,}, evicted {mem['evicted']:,}. Measured with "
        f"tracemalloc (every Python allocation the index holds: OrderedDict table and nodes, int keys, holder "
        f"dicts, floats): {mem['real_mb']:.1f} MB at the end, {mem['peak_real_mb']:.1f} MB at most (sampled every "
        f"2,000 prompts). The index's own accounting (400 B per block + 64 B per extra holder, conservative by "
        f"design) said {mem['accounted_mb']:.1f} MB.",
        "",
        f"- **{'PASS' if ok_latency else 'FAIL'}** `score` decision p99 <= {TARGET_P99_US:.0f} µs with 64 replicas and "
        f">= 100k indexed blocks: wall {main_run['wall']['p99']:.1f} µs (CPU {main_run['cpu']['p99']:.1f} µs)",
        f"- **{'PASS' if ok_memory else 'FAIL'}** index memory under its cap at 10x overfill: "
        f"{mem['peak_real_mb']:.1f} MB <= {mem['budget_mb']} MB",
        "",
    ]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    """Replace this benchmark's section (up to the next `## `), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=10000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=100_000, help="index size for the main run")
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--json", type=Path, default=None, dest="json_path", help="write raw numbers to this file")
    parser.add_argument(
        "--plot-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="only redraw the plot (and its docs link) from a --json result",
    )
    args = parser.parse_args(argv)
    if args.plot_from is not None:
        print(publish_plot(plots.load(args.plot_from), link=not args.no_docs))
        return 0
    m = machine()
    runs = []
    plugins: dict[str, Any] = {}
    for i, (blocks, block_chars) in enumerate([(1_000, 128), (args.blocks, 128), (args.blocks, 64)], 1):
        result, router = decision_run(blocks, args.decisions, args.rounds, block_chars, args.seed)
        runs.append(result)
        if i == 2:
            snapshot = router.stats.snapshot()["plugins"]
            assert isinstance(snapshot, dict)
            plugins = snapshot
        w, c = result["wall"], result["cpu"]
        print(
            f"run {i}: index {result['index_blocks']:>7,} blocks of {block_chars} chars ({result['index_mb']:.1f} MB), "
            f"{result['blocks']:.0f} blocks/prompt: wall p50 {w['p50']:.1f} p90 {w['p90']:.1f} p99 {w['p99']:.1f} "
            f"p99.9 {w['p999']:.1f} | CPU p50 {c['p50']:.1f} p99 {c['p99']:.1f} (µs)",
            flush=True,
        )
    print("per plugin (µs/call):", ", ".join(f"{k} {v['mean_us']:.1f}" for k, v in plugins.items()))
    mem = memory_run(args.budget_mb, 10, args.seed)
    print(
        f"memory: budget {mem['budget_mb']} MB, fed {mem['fed_blocks']:,} blocks, kept {mem['kept_blocks']:,}; "
        f"real {mem['real_mb']:.1f} MB (peak {mem['peak_real_mb']:.1f}), accounted {mem['accounted_mb']:.1f} MB"
    )
    m["loadavg_end"] = os.getloadavg()
    shown = [".venv/bin/python", "bench/router_micro.py", *(argv if argv is not None else sys.argv[1:])]
    section = render(m, runs, plugins, mem, " ".join(shown))
    print()
    print(section)
    data = {
        "meta": m,
        "command": " ".join(shown),
        "settings": vars(args),
        "runs": runs,
        "plugins": plugins,
        "memory": mem,
    }
    if args.json_path is not None:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"raw numbers: {args.json_path}")
    if not args.no_docs:
        update_docs(DOCS, section)
        print(f"wrote {DOCS.relative_to(REPO)}")
        print(publish_plot(data))
    return 0


def publish_plot(data: dict[str, Any], link: bool = True) -> str:
    """docs/plots/router_micro.png from a run's numbers, linked below the table of this section."""
    return plots.publish(
        "router_micro",
        lambda d: plots.router_micro_figure(d, TARGET_P99_US),
        data,
        DOCS,
        SECTION,
        "score decision latency p50/p99 per index size",
        link=link,
    )


if __name__ == "__main__":
    raise SystemExit(main())
