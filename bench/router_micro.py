"""Router micro-benchmark: the cost of one `score` decision at fleet scale, and the prefix index's memory bound.

1. Decision latency: 64 replicas (fresh engine metrics), a prefix index holding >= 100k blocks from multi-turn
   conversations of 16 tenants, then timed `pick()` calls (filters, hashing, scorers, tie-break, recording) for
   follow-up turns (80%) and new conversations (20%). The same run on an index of ~1k blocks shows the cost
   does not grow with the index. GC stays enabled (the gateway runs with it on).
2. Memory bound: a fresh index with the default 64 MB budget is fed 10x more distinct prompt blocks than fit;
   its real size is measured with tracemalloc (Python allocations of the index: OrderedDict, keys, holder
   dicts, floats) and compared with the budget and with its own accounting.

With `--base-src CHECKOUT` both this checkout and that one run as worker processes (router_micro_measure.py,
each with its own fleetgate on PYTHONPATH), their rounds interleaved (A B, B A, ...): before/after in one run.

Usage: .venv/bin/python bench/router_micro.py [--decisions 20000] [--budget-mb 64] [--no-docs] [--base-src DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import checkout, runner
from harness.plots import load
from harness.report import DEFAULT_DOCS, add_output_options, command_line, machine_info, update_docs, write_json
from harness.worker import Worker
from router_micro_measure import DecisionRun, memory_run
from router_micro_report import PLOT, SECTION, comparison, render

HERE = Path(__file__).resolve().parent
MEMORY_FACTOR = 10


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=10000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=100_000, help="index size for the main run")
    parser.add_argument("--budget-mb", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    add_output_options(parser, docs=False)
    checkout.add_option(parser, "the measurement (in a worker process, as this checkout's)")
    args = parser.parse_args(argv)
    args.base = checkout.from_option(parser, args.base_src)
    return args


def run_plan(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(index blocks, block chars) of the three runs."""
    return [(1_000, 128), (args.blocks, 128), (args.blocks, 64)]


def _say(i: int, who: str, result: dict[str, Any]) -> None:
    w, c = result["wall"], result["cpu"]
    print(
        f"run {i}{who}: index {result['index_blocks']:>7,} blocks of {result['block_chars']} chars "
        f"({result['index_mb']:.1f} MB), {result['blocks']:.0f} blocks/prompt: wall p50 {w['p50']:.1f} p90 "
        f"{w['p90']:.1f} p99 {w['p99']:.1f} p99.9 {w['p999']:.1f} | CPU p50 {c['p50']:.1f} p99 {c['p99']:.1f} (µs)",
        flush=True,
    )


def _say_memory(who: str, mem: dict[str, Any]) -> None:
    print(
        f"memory{who}: budget {mem['budget_mb']} MB, fed {mem['fed_blocks']:,} blocks, kept {mem['kept_blocks']:,}; "
        f"real {mem['real_mb']:.1f} MB (peak {mem['peak_real_mb']:.1f}), accounted {mem['accounted_mb']:.1f} MB"
    )


def measure_here(args: argparse.Namespace) -> dict[str, Any]:
    """The three runs and the memory run in this process: runs, the plugins' timings of run 2, memory."""
    runs: list[dict[str, Any]] = []
    plugins: dict[str, Any] = {}
    for i, (blocks, block_chars) in enumerate(run_plan(args), 1):
        run = DecisionRun(blocks, block_chars, args.seed)
        for _ in range(args.rounds):
            run.round(args.decisions)
        runs.append(run.summary())
        if i == 2:
            plugins = run.plugins()
        _say(i, "", runs[-1])
    print("per plugin (µs/call):", ", ".join(f"{k} {v['mean_us']:.1f}" for k, v in plugins.items()))
    mem = memory_run(args.budget_mb, MEMORY_FACTOR, args.seed)
    _say_memory("", mem)
    return {"runs": runs, "plugins": plugins, "memory": mem}


def measure_interleaved(args: argparse.Namespace, workers: dict[str, Worker]) -> dict[str, dict[str, Any]]:
    """The same runs in each worker, their rounds interleaved (A B, B A, ...); then each one's memory run."""
    out: dict[str, dict[str, Any]] = {name: {"runs": [], "plugins": {}} for name in workers}
    for i, (blocks, block_chars) in enumerate(run_plan(args), 1):
        for w in workers.values():
            w.call({"op": "setup", "blocks": blocks, "block_chars": block_chars, "seed": args.seed})
        for rnd in range(args.rounds):
            for name in runner.alternated(list(workers), rnd):
                workers[name].call({"op": "round", "n": args.decisions})
        for name, w in workers.items():
            answer = w.call({"op": "summary"})
            out[name]["runs"].append(answer["run"])
            if i == 2:
                out[name]["plugins"] = answer["plugins"]
            _say(i, f" ({name})", answer["run"])
    for name, w in workers.items():
        out[name]["memory"] = w.call(
            {"op": "memory", "budget_mb": args.budget_mb, "factor": MEMORY_FACTOR, "seed": args.seed}
        )
        _say_memory(f" ({name})", out[name]["memory"])
    return out


def run_with_base(args: argparse.Namespace, base: checkout.Checkout) -> dict[str, dict[str, Any]]:
    """Start a worker for this checkout and one for `base`, measure them interleaved, stop them by PID."""
    script = [sys.executable, str(HERE / "router_micro_measure.py")]
    logs = Path(tempfile.mkdtemp(prefix="fleetgate-router-micro-"))
    workers: dict[str, Worker] = {}
    done = False
    try:
        workers["this"] = Worker("this checkout", script, logs / "this.log")
        workers["base"] = Worker(f"base {base.root}", script, logs / "base.log", env=base.env())
        for name, w in workers.items():
            print(f"{name}: fleetgate from {w.call({'op': 'source'})['fleetgate']}, pid {w.child.pid}")
        out = measure_interleaved(args, workers)
        done = True
        return out
    finally:
        for w in workers.values():
            w.stop()
        if done:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"worker logs kept in {logs}")


def main(argv: list[str] | None = None) -> int:
    """Measure (here, or interleaved with --base-src), print, and write the docs section, JSON and plot."""
    args = parse_args(argv)
    if args.plot_from is not None:
        print(PLOT.publish(load(args.plot_from), None if args.no_docs else DEFAULT_DOCS))
        return 0
    meta = machine_info(())
    command = command_line()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "base"}
    if args.base is not None:
        meta["base_source"] = args.base.describe()
        both = run_with_base(args, args.base)
        meta["loadavg_end"] = os.getloadavg()
        print("\n" + "\n".join(comparison(both["this"], both["base"])))
        print("(a run with --base-src leaves the docs alone)")
        if args.json_path is not None:
            write_json(args.json_path, {"meta": meta, "command": command, "settings": settings, **both})
        return 0
    result = measure_here(args)
    meta["loadavg_end"] = os.getloadavg()
    section = render(meta, result["runs"], result["plugins"], result["memory"], command)
    print()
    print(section)
    data = {"meta": meta, "command": command, "settings": settings, **result}
    if args.json_path is not None:
        write_json(args.json_path, data)
        print(f"raw numbers: {args.json_path}")
    if not args.no_docs:
        update_docs(DEFAULT_DOCS, SECTION, section)
        print(f"wrote {DEFAULT_DOCS}")
        print(PLOT.publish(data, DEFAULT_DOCS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
