"""The figure of each benchmark's plot (see `plots` for where they go): matplotlib, drawn on the Agg canvas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harness import plots
from harness.stats import fmt

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OVERHEAD_TARGETS = ("direct", "floor", "fleetgate", "fleetgate-base", "fleetgate-redis", "litellm")
COLOURS = {
    "direct": "#8c8c8c",
    "floor": "#2ca02c",
    "fleetgate": "#1f77b4",
    "fleetgate-base": "#aec7e8",
    "fleetgate-redis": "#9467bd",
    "litellm": "#d62728",
    "p50": "#1f77b4",
    "p99": "#ff7f0e",
}
ROUTING_COLOURS = {
    "round_robin": "#8c8c8c",
    "least_load": "#bcbd22",
    "prefix": "#17becf",
    "score": "#1f77b4",
    "sglang-router cache_aware": "#d62728",
    "sglang-router round_robin": "#ff9896",
    "vllm-router cache_aware": "#9467bd",
}


def overhead_figure(data: dict[str, Any]) -> Figure:
    """bench/overhead.py: req/s, p50 and p99 latency (log scales) per target, grouped by mode and concurrency."""
    medians = data.get("medians") or []
    cells = sorted({(int(m["concurrency"]), bool(m["stream"])) for m in medians})
    present = {m["target"] for m in medians}
    targets = [t for t in OVERHEAD_TARGETS if t in present] + sorted(present - set(OVERHEAD_TARGETS))
    by_key = {(m["target"], int(m["concurrency"]), bool(m["stream"])): m for m in medians}
    panels = (
        ("rps", "req/s (higher is better)", ".0f"),
        ("p50_ms", "p50 latency, ms (lower is better)", ".2f"),
        ("p99_ms", "p99 latency, ms (lower is better)", ".1f"),
    )
    fig = plots.figure(11, 11)
    axes = fig.subplots(len(panels), 1, sharex=True)
    width = 0.8 / max(len(targets), 1)
    xs = range(len(cells))
    for ax, (key, title, spec) in zip(axes, panels, strict=True):
        for i, target in enumerate(targets):
            values = [plots.number((by_key.get((target, c, s)) or {}).get(key)) for c, s in cells]
            offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
            heights = [v if v is not None else 0.0 for v in values]
            bars = ax.bar(offsets, heights, width * 0.92, label=target, color=COLOURS.get(target))
            plots.label_bars(ax, bars, values, spec)
        ax.set_yscale("log")
        ax.set_ylabel(title.split(" (")[0])
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.2)
        top = ax.get_ylim()[1]
        ax.set_ylim(top=top * 3)  # room for the labels above the highest bars on a log scale
    axes[-1].set_xticks(list(xs), [f"{'stream' if s else 'non-stream'}\nc={c}" for c, s in cells])
    axes[0].legend(ncols=len(targets), loc="upper right", fontsize=9)
    settings = data.get("settings") or {}
    run = f"{settings.get('rounds', '?')} round(s) x {settings.get('duration', '?')} s, medians"
    fig.suptitle("Gateway overhead (bench/overhead.py): one fake engine, direct vs gateways", fontsize=12)
    fig.supxlabel(plots.subtitle(data, run + "; latency to the last byte"), fontsize=8)
    return fig


def gate_micro_figure(data: dict[str, Any], titles: Mapping[str, str] | None = None) -> Figure:
    """bench/gate_micro.py: p50 and p99 µs per scenario (and per phase, lighter), log scale."""
    rows = [r for r in data.get("rows") or [] if not r.get("na")]
    titles = titles or {}
    labels = [titles.get(r["scenario"], r["scenario"]) if r.get("phase") is None else f"↳ {r['what']}" for r in rows]
    fig = plots.figure(11, 1.2 + 0.45 * max(len(rows), 1))
    ax = fig.subplots()
    ys = list(range(len(rows)))
    h = 0.38
    for j, (key, name) in enumerate((("p50_us", "p50"), ("p99_us", "p99"))):
        values = [plots.number(r.get(key)) for r in rows]
        bars = ax.barh(
            [y - h / 2 + j * h for y in ys],
            [v or 0.0 for v in values],
            h * 0.95,
            label=name,
            color=COLOURS[name],
        )
        for bar, row in zip(bars, rows, strict=True):
            if row.get("phase") is not None:
                bar.set_alpha(0.45)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v is not None else "" for v in values], fontsize=7, padding=2)
    ax.set_yticks(ys, labels, fontsize=9)
    for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
        if row.get("phase") is None:
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=ax.get_xlim()[1] * 2.5)
    ax.set_xlabel("µs per request (log scale)")
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="lower right", fontsize=9)
    settings = data.get("settings") or {}
    run = f"{settings.get('rounds', '?')} rounds x {settings.get('requests', '?')} requests, percentiles pooled"
    ax.set_title("Tenant plane and outbox cost per request (bench/gate_micro.py)", fontsize=12)
    fig.supxlabel(plots.subtitle(data, run), fontsize=8)
    return fig


def router_micro_figure(data: dict[str, Any], target_p99_us: float | None = None) -> Figure:
    """bench/router_micro.py: `score` decision latency p50 and p99 (wall, and thread CPU) per index size."""
    runs = data.get("runs") or []
    fig = plots.figure(10, 5.5)
    ax = fig.subplots()
    series = (
        ("wall", "p50", "wall p50", COLOURS["p50"], None),
        ("wall", "p99", "wall p99", COLOURS["p99"], None),
        ("cpu", "p50", "CPU p50", COLOURS["p50"], "//"),
        ("cpu", "p99", "CPU p99", COLOURS["p99"], "//"),
    )
    width = 0.8 / len(series)
    for i, (kind, pct, name, colour, hatch) in enumerate(series):
        values = [plots.number((r.get(kind) or {}).get(pct)) for r in runs]
        bars = ax.bar(
            [x - 0.4 + width * (i + 0.5) for x in range(len(runs))],
            [v or 0.0 for v in values],
            width * 0.92,
            label=name,
            color=colour,
            alpha=0.45 if hatch else 1.0,
            hatch=hatch,
            edgecolor="white" if hatch else None,
        )
        ax.bar_label(bars, labels=[f"{v:.0f}" if v is not None else "" for v in values], fontsize=8, padding=2)
    if target_p99_us is not None:
        ax.axhline(
            target_p99_us, color="#d62728", linestyle="--", linewidth=1, label=f"goal: p99 <= {target_p99_us:.0f} µs"
        )
    ax.set_xticks(
        list(range(len(runs))),
        [
            f"{r['index_blocks']:,} blocks ({r['index_mb']:.1f} MB)\n{r['block_chars']}-char blocks, "
            f"~{r['blocks']:.0f} per prompt"
            for r in runs
        ],
        fontsize=9,
    )
    ax.set_ylabel("µs per decision")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncols=5, loc="upper left", fontsize=9)
    decisions = f"{runs[0]['n']:,} decisions ({runs[0]['rounds']} rounds) per index" if runs else ""
    ax.set_title("Router decision latency ('score' policy) per index size (bench/router_micro.py)", fontsize=12)
    fig.supxlabel(plots.subtitle(data, decisions + "; medians over rounds"), fontsize=8)
    return fig


def _ttft_panel(ax: Axes, shared: list[dict[str, Any]]) -> None:
    """TTFT p50 / p90 / p99 per router on `shared`."""
    xs = list(range(len(shared)))
    width = 0.26
    for j, (key, name, colour) in enumerate(
        (("ttft_p50", "p50", "#1f77b4"), ("ttft_p90", "p90", "#aec7e8"), ("ttft_p99", "p99", "#ff7f0e"))
    ):
        values = [r[key] for r in shared]
        bars = ax.bar(
            [x - width + j * width for x in xs], [v or 0 for v in values], width * 0.95, label=name, color=colour
        )
        ax.bar_label(bars, labels=[fmt(v, ".2f") for v in values], fontsize=7, padding=2)
    ax.set_xticks(xs, _labels(shared), fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("shared: time to first token (lower is better)", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="upper left", ncols=3)
    ax.set_ylim(top=max([r["ttft_p99"] or 0 for r in shared] + [1]) * 1.3)
    _grid(ax)


def _cached_panel(ax: Axes, shared: list[dict[str, Any]]) -> None:
    """Cached-token ratio per router on `shared`, with the best possible as a dashed line over each bar."""
    xs = list(range(len(shared)))
    cached = [r["cached_ratio"] or 0 for r in shared]
    colours = [ROUTING_COLOURS.get(r["label"], "#7f7f7f") for r in shared]
    bars = ax.bar(xs, cached, 0.6, color=colours, label="cached ratio")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in cached], fontsize=8, padding=2)
    for x, r in zip(xs, shared, strict=True):
        if r["best_ratio"] is not None:
            ax.hlines(r["best_ratio"], x - 0.35, x + 0.35, colors="black", linestyles="--", linewidth=1.2)
    if shared and shared[0]["best_ratio"] is not None:
        ax.plot([], [], "k--", label="best possible (this run's requests)")
    ax.set_xticks(xs, _labels(shared), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("cached / prompt tokens")
    ax.set_title("shared: cached-token ratio from the engines' usage vs the best possible", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="lower right")
    _grid(ax)


def _wall_panel(ax: Axes, rows: list[dict[str, Any]]) -> None:
    """Wall time of the whole workload per (workload, router)."""
    walls = [
        (
            f"{r['workload']}\n{r['label'].replace(' ', chr(10), 1)}",
            r["wall"] or 0,
            ROUTING_COLOURS.get(r["label"], "#7f7f7f"),
        )
        for r in rows
    ]
    bars = ax.bar(range(len(walls)), [w for _, w, _ in walls], 0.6, color=[c for _, _, c in walls])
    ax.bar_label(bars, labels=[f"{w:.1f}" for _, w, _ in walls], fontsize=8, padding=2)
    ax.set_xticks(range(len(walls)), [n for n, _, _ in walls], fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("wall time of the whole workload (lower is better)", fontsize=10, loc="left")
    ax.margins(y=0.15)
    _grid(ax)


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    return [r["label"].replace(" ", "\n", 1) for r in rows]


def _grid(ax: Axes) -> None:
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def routing_figure(data: dict[str, Any]) -> Figure:
    """bench/routing.py: TTFT per router on `shared`; cached ratio vs the best possible; wall time."""
    rows = [r for r in data.get("rows") or [] if not r.get("note")]
    shared = [r for r in rows if r["workload"] == "shared"]
    fig = plots.figure(12, 10)
    ax1, ax2, ax3 = fig.subplots(3, 1)
    _ttft_panel(ax1, shared)
    _cached_panel(ax2, shared)
    _wall_panel(ax3, rows)
    sizes: Mapping[str, Any] = (data.get("workloads") or {}).get("shared") or {}
    fig.suptitle("Routing on 2 real llama-server replicas x 2 slots (bench/routing.py)", fontsize=12)
    run = (
        f"{sizes.get('tenants', '?')} tenants, {sizes.get('conversations', '?')} conversations x "
        f"{sizes.get('turns', '?')} turns, concurrency {(data.get('settings') or {}).get('concurrency', '?')}"
    )
    fig.supxlabel(plots.subtitle(data, run), fontsize=8)
    return fig
