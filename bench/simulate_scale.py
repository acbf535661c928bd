"""Fleet simulator at scale: 256 simulated replicas and 100k requests through one routing policy, timed.

Runs `fleetgate simulate`'s engine (FleetSim) in-process for one policy (default `score`), prints wall and CPU
time, events per second and the run's headline numbers, and writes its section of docs/benchmarks.md. The budget
is 120 s of wall time on this machine; other processes' CPU use during the run is measured from /proc/stat and
printed next to it, because on a shared 2-core machine it decides the wall time as much as the code does.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetgate.sim.fleet import FleetSim, FleetSpec
from fleetgate.sim.profiles import load_profile
from fleetgate.sim.report import summarize
from fleetgate.sim.workload import ChatWorkload
from harness.report import DEFAULT_DOCS, command_line, machine_info, machine_line, update_docs, write_json
from harness.usage import machine_busy_seconds

SECTION = "## Fleet simulator at scale (bench/simulate_scale.py)"
BUDGET_S = 120.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One timed run; returns everything the report needs."""
    profile = load_profile(args.profile)
    workload = ChatWorkload(
        requests=args.requests,
        rate=args.rate,
        tenants=args.tenants,
        system_prompts=args.system_prompts,
        max_context=profile.max_model_len,
        seed=args.seed,
    )
    spec = FleetSpec(profile, replicas=args.replicas, policy=args.policy, seed=args.seed)
    meta = machine_info(())
    busy0, cpu0, wall0 = machine_busy_seconds(), time.process_time(), time.perf_counter()
    sim = FleetSim(spec)
    setup = time.perf_counter() - wall0
    spent = {"routing": 0.0, "workload": 0.0}
    pick = sim.router.pick

    def timed_pick(request: Any, candidates: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return pick(request, candidates)
        finally:
            spent["routing"] += time.perf_counter() - t0

    def timed_workload() -> Iterator[Any]:
        it = iter(workload)
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            spent["workload"] += time.perf_counter() - t0
            if item is None:
                return
            yield item

    sim.router.pick = timed_pick  # type: ignore[method-assign]  # timing only: the same router decides
    result = sim.run(timed_workload())  # the workload is generated lazily, inside the timed loop
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    other = machine_busy_seconds() - busy0 - cpu
    meta["loadavg_end"] = os.getloadavg()
    rep = summarize(result)
    return {
        "meta": meta,
        "command": command_line(),
        "args": vars(args),
        "wall_s": wall,
        "cpu_s": cpu,
        "other_cpu_share": max(0.0, other / wall),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_s": setup,
        "routing_s": spent["routing"],
        "workload_s": spent["workload"],
        "events": result.events,
        "events_per_s": result.events / wall,
        "engine_steps": sum(r.engine.stats.steps for r in result.replicas),
        "report": {k: v for k, v in rep.to_json().items() if k != "replicas"},
    }


def section(data: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    a, r = data["args"], data["report"]
    verdict = "PASS" if data["wall_s"] < BUDGET_S else "FAIL"
    shed = ", ".join(f"{k} {v}" for k, v in r["shed"].items()) or "none"
    return f"""{SECTION}

{machine_line(data["meta"])}

Command: `{data["command"]}`

Setup: `FleetSim` (what `fleetgate simulate` runs) with {a["replicas"]} replicas of the `{a["profile"]}` engine model
and the `{a["policy"]}` routing policy from `make_router`, admission on (the gateway's defaults: FairQueue and the
controller's capacity rule), metrics scraped into `Replica.metrics` every simulated second. Workload: the seeded
chat generator, {a["requests"]:,} requests arriving as a Poisson process at {a["rate"]:g}/s from {a["tenants"]}
tenants with {a["system_prompts"]} shared system prompts each, multi-turn conversations (mean 4 turns, growing
history), answers of 32-256 tokens. Generation is lazy and inside the timed loop. One process, one core used;
`other CPU` is what every other process on the machine used meanwhile (from /proc/stat), as a share of one core.

| replicas | requests | wall s | CPU s | other CPU | events | events/s | engine steps | simulated s | peak RSS MB |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| {a["replicas"]} | {a["requests"]:,} | {data["wall_s"]:.1f} | {data["cpu_s"]:.1f} | {data["other_cpu_share"]:.0%} \
| {data["events"]:,} | {data["events_per_s"]:,.0f} | {data["engine_steps"]:,} | {r["sim_seconds"]:.1f} \
| {data["max_rss_mb"]:,.0f} |

Simulated results (`{a["policy"]}`): TTFT p50 {r["ttft_p50_ms"]:.1f} ms, p99 {r["ttft_p99_ms"]:.1f} ms; cache hit
ratio {r["cache_hit_ratio"]:.1%}; {r["output_tokens_per_s"]:,.0f} output tokens/s; gateway queue p99
{r["gateway_queue_p99_ms"]:.1f} ms; load max/mean {r["load_max_mean"]:.2f}; shed: {shed}.

Where the wall time went: building the fleet ({a["replicas"]} engines' KV block pools) {data["setup_s"]:.1f} s, routing
decisions (`RoutingPipeline.pick` over all {a["replicas"]} candidates, timed around each call)
{data["routing_s"]:.1f} s ({data["routing_s"] / data["wall_s"]:.0%}, {1e6 * data["routing_s"] / a["requests"]:.0f} µs a
decision), generating the workload {data["workload_s"]:.1f} s; the rest ({
        data["wall_s"]
        - data["setup_s"]
        - data["routing_s"]
        - data["workload_s"]:.1f} s) is the event loop, admission and the engine models (mostly their
KV block bookkeeping: one allocation and one cache registration per 16 tokens per sequence).

Engine steps counts every modelled forward pass; events counts heap events and arrivals: while an engine's batch
only decodes, its steps are applied lazily and an event happens only where something changes (a sequence finishes,
a request joins): see `DecodeBatch` in src/fleetgate/sim/decode_run.py.

- **{verdict}** {a["replicas"]} replicas x {a["requests"]:,} requests in under {BUDGET_S:.0f} s: \
{data["wall_s"]:.1f} s wall
"""


def main() -> None:
    """Parse arguments, run, print, update the docs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=256)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2500.0, help="arrivals per second (about 10 per replica)")
    parser.add_argument("--tenants", type=int, default=16)
    parser.add_argument("--system-prompts", type=int, default=4)
    parser.add_argument("--policy", default="score")
    parser.add_argument("--profile", default="h100-llama3-8b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    data = run(args)
    r = data["report"]
    print(
        f"{args.replicas} replicas x {args.requests:,} requests ({args.policy}): wall {data['wall_s']:.1f} s, "
        f"CPU {data['cpu_s']:.1f} s, other processes {data['other_cpu_share']:.0%} of a core, "
        f"{data['events']:,} events ({data['events_per_s']:,.0f}/s), {data['engine_steps']:,} engine steps"
    )
    print(
        f"setup {data['setup_s']:.1f} s, routing {data['routing_s']:.1f} s, workload {data['workload_s']:.1f} s, "
        f"rest {data['wall_s'] - data['setup_s'] - data['routing_s'] - data['workload_s']:.1f} s"
    )
    print(
        f"simulated {r['sim_seconds']:.1f} s: TTFT p50 {r['ttft_p50_ms']:.1f} ms p99 {r['ttft_p99_ms']:.1f} ms, "
        f"cache hit {r['cache_hit_ratio']:.1%}, {r['ok']:,} finished, shed {r['shed'] or 0}"
    )
    if args.json:
        write_json(args.json, data)
    if not args.no_docs:
        update_docs(args.docs, SECTION, section(data))
        print(f"updated {args.docs}")
    sys.exit(0 if data["wall_s"] < BUDGET_S else 1)


if __name__ == "__main__":
    main()
