"""Numbers from a simulated run (latency percentiles, throughput, cache hits, load spread) and a PNG comparing them."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetgate.sim.fleet import RunResult


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


@dataclass(frozen=True)
class ReplicaLoad:
    """What one replica did."""

    id: str
    routed: int
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    busy: float  # share of the run the engine was stepping
    mean_load: float  # running + waiting, averaged over scrapes
    peak_load: float
    mean_kv: float  # KV cache usage, averaged over scrapes
    preemptions: int


@dataclass(frozen=True)
class PolicyReport:
    """One policy's results; times in milliseconds unless named otherwise."""

    policy: str
    offered: int
    ok: int
    shed: dict[str, int]
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    gateway_queue_p50_ms: float  # arrival -> routed (admission's fair queue)
    gateway_queue_p99_ms: float
    engine_queue_p50_ms: float  # routed -> first scheduled (the engine's waiting queue)
    engine_queue_p99_ms: float
    requests_per_s: float
    output_tokens_per_s: float
    cache_hit_ratio: float  # cached prompt tokens / prompt tokens, finished requests
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    sim_seconds: float
    load_max_min: float | None  # routed requests, busiest / idlest replica (None: some replica got nothing)
    load_max_mean: float
    load_cv: float
    wall_s: float
    events: int
    events_per_s: float
    replicas: list[ReplicaLoad] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """Plain data (per-replica rows included)."""
        return asdict(self)


def summarize(run: RunResult) -> PolicyReport:
    """Reduce a run to its report."""
    ok = [o for o in run.outcomes if o.status == "ok"]
    shed = Counter(o.status.removeprefix("shed:") for o in run.outcomes if o.status != "ok")
    ms = 1000.0
    ttft = sorted((o.first_token_at - o.arrival) * ms for o in ok)
    e2e = sorted((o.finished_at - o.arrival) * ms for o in ok)
    gateway = sorted((o.routed_at - o.arrival) * ms for o in run.outcomes if o.routed_at >= 0)
    engine = sorted((o.scheduled_at - o.routed_at) * ms for o in ok)
    start = min((o.arrival for o in run.outcomes), default=0.0)
    span = max(run.end_time - start, 1e-9)
    prompt = sum(o.prompt_tokens for o in ok)
    cached = sum(o.cached_tokens for o in ok)
    output = sum(o.output_tokens for o in ok)
    routed = [r.routed for r in run.replicas]
    mean = statistics.fmean(routed)
    loads = [
        ReplicaLoad(
            id=r.replica.id,
            routed=r.routed,
            prompt_tokens=r.engine.stats.prompt_tokens,
            cached_tokens=r.engine.stats.prompt_tokens_cached,
            generated_tokens=r.engine.stats.generation_tokens,
            busy=round(r.busy / span, 4),
            mean_load=round(r.load_sum / r.samples, 3) if r.samples else 0.0,
            peak_load=r.load_max,
            mean_kv=round(r.kv_sum / r.samples, 4) if r.samples else 0.0,
            preemptions=r.engine.stats.preemptions,
        )
        for r in run.replicas
    ]
    return PolicyReport(
        policy=run.spec.policy,
        offered=len(run.outcomes),
        ok=len(ok),
        shed=dict(sorted(shed.items())),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p99_ms=percentile(ttft, 99),
        e2e_p50_ms=percentile(e2e, 50),
        e2e_p99_ms=percentile(e2e, 99),
        gateway_queue_p50_ms=percentile(gateway, 50),
        gateway_queue_p99_ms=percentile(gateway, 99),
        engine_queue_p50_ms=percentile(engine, 50),
        engine_queue_p99_ms=percentile(engine, 99),
        requests_per_s=len(ok) / span,
        output_tokens_per_s=output / span,
        cache_hit_ratio=cached / prompt if prompt else 0.0,
        prompt_tokens=prompt,
        cached_tokens=cached,
        output_tokens=output,
        sim_seconds=span,
        load_max_min=max(routed) / min(routed) if min(routed) > 0 else None,
        load_max_mean=max(routed) / mean if mean else 0.0,
        load_cv=statistics.pstdev(routed) / mean if mean else 0.0,
        wall_s=run.wall_s,
        events=run.events,
        events_per_s=run.events / run.wall_s if run.wall_s > 0 else 0.0,
        replicas=loads,
    )


ROWS: list[tuple[str, str, str]] = [  # (label, field, format)
    ("finished", "ok", "{:,}"),
    ("shed", "shed", "{}"),
    ("TTFT p50 ms", "ttft_p50_ms", "{:.1f}"),
    ("TTFT p99 ms", "ttft_p99_ms", "{:.1f}"),
    ("end-to-end p50 ms", "e2e_p50_ms", "{:.0f}"),
    ("end-to-end p99 ms", "e2e_p99_ms", "{:.0f}"),
    ("gateway queue p99 ms", "gateway_queue_p99_ms", "{:.1f}"),
    ("engine queue p50 ms", "engine_queue_p50_ms", "{:.1f}"),
    ("engine queue p99 ms", "engine_queue_p99_ms", "{:.1f}"),
    ("requests/s", "requests_per_s", "{:.1f}"),
    ("output tokens/s", "output_tokens_per_s", "{:,.0f}"),
    ("cache hit ratio", "cache_hit_ratio", "{:.1%}"),
    ("load max/min", "load_max_min", "{:.2f}"),
    ("load max/mean", "load_max_mean", "{:.2f}"),
    ("simulated s", "sim_seconds", "{:.1f}"),
    ("wall s", "wall_s", "{:.2f}"),
    ("events/s", "events_per_s", "{:,.0f}"),
]


def table_rows(reports: Sequence[PolicyReport]) -> tuple[list[str], list[list[str]]]:
    """Policies side by side: a header per policy, one row per metric (label first)."""
    rows = []
    for label, name, fmt in ROWS:
        row = [label]
        for rep in reports:
            value = getattr(rep, name)
            if name == "shed":
                row.append(", ".join(f"{k} {v}" for k, v in value.items()) or "0")
            else:
                row.append("-" if value is None else fmt.format(value))
        rows.append(row)
    return ["", *(r.policy for r in reports)], rows


def plot(reports: Sequence[PolicyReport], path: Path, title: str = "") -> None:
    """Policies side by side: TTFT, queueing, cache hits, throughput and the per-replica load spread."""
    import matplotlib  # imported here: only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.policy for r in reports]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    x = range(len(reports))

    def bars(ax: Any, values: list[list[float]], labels: list[str], ylabel: str, heading: str) -> None:
        """Grouped bars, one group per policy."""
        width = 0.8 / len(values)
        for k, (series, label) in enumerate(zip(values, labels, strict=True)):
            ax.bar([i + k * width for i in x], series, width, label=label)
        ax.set_xticks([i + width * (len(values) - 1) / 2 for i in x], names)
        ax.set_ylabel(ylabel)
        ax.set_title(heading)
        if len(values) > 1:
            ax.legend(fontsize=8)

    bars(
        axes[0][0],
        [[r.ttft_p50_ms for r in reports], [r.ttft_p99_ms for r in reports]],
        ["p50", "p99"],
        "ms",
        "time to first token",
    )
    bars(
        axes[0][1],
        [[r.gateway_queue_p99_ms for r in reports], [r.engine_queue_p99_ms for r in reports]],
        ["gateway p99", "engine p99"],
        "ms",
        "queueing delay",
    )
    bars(axes[0][2], [[100 * r.cache_hit_ratio for r in reports]], ["hit"], "% of prompt tokens", "prefix cache hits")
    bars(axes[1][0], [[r.output_tokens_per_s for r in reports]], ["out"], "tokens/s", "output throughput")
    bars(
        axes[1][1],
        [[r.e2e_p50_ms for r in reports], [r.e2e_p99_ms for r in reports]],
        ["p50", "p99"],
        "ms",
        "end-to-end latency",
    )
    ax = axes[1][2]
    for rep in reports:
        ax.plot(sorted((r.routed for r in rep.replicas), reverse=True), label=rep.policy)
    ax.set_xlabel("replica (busiest first)")
    ax.set_ylabel("requests routed")
    ax.set_title("load per replica")
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
