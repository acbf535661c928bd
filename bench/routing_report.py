"""bench/routing.py's numbers: one row per (workload, router) with its requests pooled over repeats, the goals of
issue 6, and the table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness.report import Verdict, print_table, print_verdicts
from harness.stats import fmt, interpolated, mean
from routing_run import Result, RunResult

# The goals of issue 6 (see the verdict lines).
MIN_SHARE_OF_BEST = 0.90
MAX_TTFT_VS_RR = 1 / 3
MAX_UNIQUE_WALL_VS_RR = 1.05


def over_slots(results: Sequence[Result], slots: int = 2) -> float | None:
    """Share of the run during which one replica held more requests than it has slots (so one waited in its
    queue) while the other had a slot free: time a better placement would have saved. None without replica ids
    (the peers do not say where they sent a request)."""
    if not results or any(not r.replica for r in results):
        return None
    events = sorted([(r.started, 1, r.replica) for r in results] + [(r.finished, -1, r.replica) for r in results])
    replicas = sorted({r.replica for r in results})
    if len(replicas) < 2:
        replicas.append("(idle)")
    load = dict.fromkeys(replicas, 0)
    bad, last = 0.0, events[0][0]
    for t, delta, replica in events:
        if max(load.values()) > slots and min(load.values()) < slots:
            bad += t - last
        last = t
        load[replica] += delta
    span = events[-1][0] - events[0][0]
    return bad / span if span > 0 else None


def route_reasons(results: Sequence[Result]) -> dict[str, int]:
    """fleetgate's `x-fleetgate-route` reasons (`policy:reason[:value]`) without policy and value, counted."""
    out: dict[str, int] = {}
    for r in results:
        if r.route:
            parts = r.route.split(":")
            reason = parts[1] if len(parts) > 1 else parts[0]
            out[reason] = out.get(reason, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _cache_fields(ok: list[Result]) -> dict[str, Any]:
    """Cached tokens against the best possible, and the hits of first and follow-up turns."""
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    best = sum(r.best for r in ok)
    follow = [r for r in ok if r.turn > 0]
    first = [r for r in ok if r.turn == 0]
    return {
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "best_tokens": best,
        "cached_ratio": cached / prompt if prompt else None,
        "best_ratio": best / prompt if prompt else None,
        "best_timed_ratio": sum(r.best_timed for r in ok) / prompt if prompt else None,
        "best_no_history_ratio": sum(r.best_no_history for r in ok) / prompt if prompt else None,
        "share_of_best": cached / best if best else None,
        # A request "hit" when it found (within 2 tokens) all it could have: for a follow-up its previous turn.
        "followup_hits": sum(1 for r in follow if r.cached_tokens >= r.best - 2),
        "followups": len(follow),
        "first_hits": sum(1 for r in first if r.cached_tokens >= r.best - 2),
        "firsts": len(first),
    }


def _run_fields(done: list[RunResult]) -> dict[str, Any]:
    """Wall time, placement, CPU and the oracle, over the runs that happened."""
    tokens = [sum(t) for t in zip(*(run.replica_tokens for run in done), strict=True)] if done else []
    decisions = [run.decisions for run in done]
    oracle = [o["ttft"] for run in done for o in run.oracle]
    return {
        "wall": mean([run.wall for run in done]),
        "walls": [round(run.wall, 1) for run in done],
        "over_slots": mean([over_slots(run.results) for run in done]),
        "split": (tokens[0] / sum(tokens)) if len(tokens) == 2 and sum(tokens) > 0 else None,
        "other_cpu": mean([run.other_cpu for run in done]),
        "engine_cpu": mean([run.engine_cpu for run in done]),
        "engine_cpu_seconds": mean([run.engine_cpu * run.wall if run.engine_cpu is not None else None for run in done]),
        "router_cpu": mean([run.router_cpu for run in done]),
        "loadavg_start": [list(run.loadavg_start) for run in done],
        "tokenize_mismatch": sum(run.tokenize_mismatch for run in done),
        "oracle_ttft_p50": interpolated(oracle, 50),
        "oracle_ttft_p90": interpolated(oracle, 90),
        "oracle_requests": sum(len(run.oracle) for run in done),
        # Oracle requests that found at least their best possible prefix (within 2 tokens) in the cache.
        "oracle_hits": sum(1 for run in done for o in run.oracle if o["cached"] >= o["best"] - 2),
        # Attempts the gateway retried on another replica (the client never saw them fail).
        "router_retries": None
        if not done or any(d is None for d in decisions)
        else sum(max(0, (d or 0) - len(run.results)) for d, run in zip(decisions, done, strict=True)),
    }


def summarize(runs: Sequence[RunResult]) -> dict[str, Any]:
    """The row of one (workload, target): requests pooled over its repeats, wall time and CPU averaged."""
    first_run = runs[0]
    done = [run for run in runs if not run.note]
    results = [r for run in done for r in run.results]
    ok = [r for r in results if not r.error]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    e2e = [r.e2e for r in ok if r.e2e is not None]
    return {
        "workload": first_run.workload,
        "target": first_run.target,
        "label": first_run.label,
        "note": "" if done else first_run.note,
        "runs": len(done),
        "requests": len(results),
        "errors": len(results) - len(ok),
        "retries": sum(max(0, r.attempts - 1) for r in results),
        "ttft_p50": interpolated(ttft, 50),
        "ttft_p90": interpolated(ttft, 90),
        "ttft_p99": interpolated(ttft, 99),
        "e2e_p50": interpolated(e2e, 50),
        "e2e_p99": interpolated(e2e, 99),
        **_cache_fields(ok),
        **_run_fields(done),
        "peer_version": first_run.peer_version,
        "routes": route_reasons(results),
    }


def _row(rows: list[dict[str, Any]], workload: str, target: str) -> dict[str, Any] | None:
    row = next((r for r in rows if r["workload"] == workload and r["target"] == target), None)
    return None if row is None or row["note"] else row


def _runs(n: int) -> str:
    return "one run" if n == 1 else f"{n} runs"


def _share_verdict(score: dict[str, Any] | None) -> Verdict:
    if score is None or score["share_of_best"] is None:
        return Verdict(f"shared: `score` >= {MIN_SHARE_OF_BEST:.0%} of the best cached ratio", "not run", None)
    return Verdict(
        f"shared: `score` cached-token ratio >= {MIN_SHARE_OF_BEST:.0%} of the best possible",
        f"{score['cached_ratio']:.3f} of a best {score['best_ratio']:.3f} = {score['share_of_best']:.0%}",
        score["share_of_best"] >= MIN_SHARE_OF_BEST,
    )


def _oracle_bound(rows: list[dict[str, Any]], rr: dict[str, Any]) -> str:
    oracle = next((r for r in rows if r["workload"] == "shared" and r.get("oracle_ttft_p50")), None)
    if oracle is None:
        return ""
    best_ratio = oracle["oracle_ttft_p50"] / rr["ttft_p50"]
    return (
        f"; the oracle (every request alone on an idle replica with all its reusable prefix cached: "
        f"{oracle['oracle_hits']}/{oracle['oracle_requests']} found it) has TTFT p50 "
        f"{oracle['oracle_ttft_p50']:.3f} s = {best_ratio:.2f}x round_robin's: "
        + (
            "no router can reach 1/3 on this engine and workload"
            if best_ratio > MAX_TTFT_VS_RR
            else "the bound allows 1/3"
        )
    )


def _ttft_verdict(rows: list[dict[str, Any]], score: dict[str, Any] | None, rr: dict[str, Any] | None) -> Verdict:
    goal = "shared: `score` TTFT p50 <= 1/3 of round_robin's"
    if not (score and rr and score["ttft_p50"] is not None and rr["ttft_p50"]):
        return Verdict(goal, "not run", None)
    ratio = score["ttft_p50"] / rr["ttft_p50"]
    measured = f"{score['ttft_p50']:.3f} s vs {rr['ttft_p50']:.3f} s = {ratio:.2f}x{_oracle_bound(rows, rr)}"
    return Verdict(goal, measured, ratio <= MAX_TTFT_VS_RR)


def _peer_verdict(rows: list[dict[str, Any]], score: dict[str, Any] | None, sgl: dict[str, Any] | None) -> Verdict:
    goal = "shared: `score` beats sglang-router cache_aware on TTFT p50 and p99"
    if not (score and sgl):
        why = next(
            (r["note"] for r in rows if r["workload"] == "shared" and r["target"] == "sglang-router:cache_aware"),
            "not run",
        )
        return Verdict(goal, why or "n/a", None)
    better = score["ttft_p50"] < sgl["ttft_p50"] and score["ttft_p99"] < sgl["ttft_p99"]
    return Verdict(
        goal,
        f"p50 {score['ttft_p50']:.3f} vs {sgl['ttft_p50']:.3f} s, p99 {score['ttft_p99']:.3f} vs "
        f"{sgl['ttft_p99']:.3f} s ({_runs(score['runs'])} each; other CPU {fmt(score['other_cpu'], '.0%')} vs "
        f"{fmt(sgl['other_cpu'], '.0%')})",
        better,
    )


def _unique_verdict(uscore: dict[str, Any] | None, urr: dict[str, Any] | None) -> Verdict:
    if not (uscore and urr and uscore["wall"] and urr["wall"]):
        return Verdict("unique: `score` wall time within 5% of round_robin's", "not run", None)
    ratio = uscore["wall"] / urr["wall"]

    def runs(row: dict[str, Any]) -> str:
        return " / ".join(f"{w:.1f}" for w in row["walls"])

    return Verdict(
        f"unique: `score` wall time within {MAX_UNIQUE_WALL_VS_RR - 1:.0%} of round_robin's",
        f"mean {uscore['wall']:.1f} s vs {urr['wall']:.1f} s = {ratio:.3f}x (runs {runs(uscore)} vs "
        f"{runs(urr)} s; replicas' CPU {fmt(uscore['engine_cpu_seconds'], '.0f')} vs "
        f"{fmt(urr['engine_cpu_seconds'], '.0f')} s; a replica over its slots while the other had one free "
        f"{fmt(uscore['over_slots'], '.0%')} vs {fmt(urr['over_slots'], '.0%')} of the time; other CPU "
        f"{fmt(uscore['other_cpu'], '.0%')} vs {fmt(urr['other_cpu'], '.0%')})",
        ratio <= MAX_UNIQUE_WALL_VS_RR,
    )


def verdicts(rows: list[dict[str, Any]]) -> list[Verdict]:
    """The four goals of issue 6, from the rows of this run."""
    score = _row(rows, "shared", "fleetgate:score")
    rr = _row(rows, "shared", "fleetgate:round_robin")
    return [
        _share_verdict(score),
        _ttft_verdict(rows, score, rr),
        _peer_verdict(rows, score, _row(rows, "shared", "sglang-router:cache_aware")),
        _unique_verdict(_row(rows, "unique", "fleetgate:score"), _row(rows, "unique", "fleetgate:round_robin")),
    ]


COLUMNS = (
    "workload",
    "router / policy",
    "req",
    "err",
    "TTFT p50 s",
    "TTFT p90 s",
    "TTFT p99 s",
    "E2E p50 s",
    "E2E p99 s",
    "cached ratio",
    "best possible",
    "of best",
    "history hits",
    "wall s",
    "over slots",
    "engine CPU s",
    "replica 0 share",
    "other CPU",
)
LEFT = ("workload", "router / policy")
SECONDS = ("ttft_p50", "ttft_p90", "ttft_p99", "e2e_p50", "e2e_p99")


def table_row(r: dict[str, Any]) -> tuple[str, ...]:
    """One row of the table; a run that could not happen shows n/a."""
    if r["note"]:
        return (r["workload"], r["label"], "n/a", *("-",) * (len(COLUMNS) - 3))
    reusable = (r["best_ratio"] or 0.0) >= 0.05  # `unique`: nothing to reuse, so no hits and no share of best
    hits = f"{r['followup_hits']}/{r['followups']}" if r["followups"] and reusable else "-"
    return (
        r["workload"],
        r["label"],
        str(r["requests"]),
        str(r["errors"]),
        *(fmt(r[k], ".3f") for k in SECONDS),
        fmt(r["cached_ratio"], ".3f"),
        fmt(r["best_ratio"], ".3f"),
        f"{r['share_of_best']:.0%}" if r["share_of_best"] is not None and reusable else "-",
        hits,
        fmt(r["wall"], ".1f"),
        fmt(r["over_slots"], ".0%"),
        fmt(r["engine_cpu_seconds"], ".0f"),
        fmt(r["split"], ".0%"),
        fmt(r["other_cpu"], ".0%"),
    )


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per (workload, target)."""
    return [table_row(r) for r in rows]


def print_report(console: Console, rows: list[dict[str, Any]], checks: list[Verdict]) -> None:
    """The Rich table and the verdicts."""
    title = "Routing on 2 llama-server replicas (2 slots each)"
    print_table(console, title, COLUMNS, table_rows(rows), LEFT, whole=LEFT)
    for r in rows:
        if r["note"]:
            console.print(f"{escape(r['label'])} on {r['workload']}: n/a ({escape(r['note'])})")
    print_verdicts(console, checks)
