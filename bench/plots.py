"""PNG plots of the bench/ reports, written next to their tables in docs/benchmarks.md.

Each benchmark calls `publish(...)` after it writes its docs section: the plot goes to `plots/<name>.png` beside
the Markdown file (docs/plots/ by default) and an image link right below the section's table. The scripts'
`--plot-from JSON` re-renders only the plot and the link from a saved `--json` result. matplotlib (>= 3.8, from
the `test` extra) draws on the Agg canvas, without pyplot or a display; without matplotlib a benchmark still
writes its tables and says why there is no plot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OVERHEAD_TARGETS = ("direct", "floor", "fleetgate", "fleetgate-redis", "litellm")
COLOURS = {
    "direct": "#8c8c8c",
    "floor": "#2ca02c",
    "fleetgate": "#1f77b4",
    "fleetgate-redis": "#9467bd",
    "litellm": "#d62728",
    "p50": "#1f77b4",
    "p99": "#ff7f0e",
}
DPI = 110


def load(path: Path) -> dict[str, Any]:
    """A result written by a benchmark's `--json`."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a benchmark result (expected a JSON object)")
    return data


def png_path(docs: Path, name: str) -> Path:
    """Where a plot of the report in `docs` goes: `plots/<name>.png` next to it."""
    return docs.parent / "plots" / f"{name}.png"


def publish(
    name: str,
    draw: Callable[[dict[str, Any]], Figure],
    data: dict[str, Any],
    docs: Path,
    heading: str,
    alt: str,
    link: bool = True,
) -> str:
    """Draw `data`, save it as `plots/<name>.png` next to `docs` and link it in the section under `heading`.

    Returns a line for the console. Without matplotlib nothing is written (the old link, if any, stays out of the
    freshly written section)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'matplotlib>=3.8')"
    png = png_path(docs, name)
    save(draw(data), png)
    shown = _shown(png)
    if not link:
        return f"plot: {shown}"
    meta = data.get("meta") or {}
    where = link_image(docs, heading, png, alt, date=meta.get("date"), command=_command(data))
    return f"plot: {shown}" + (f" (linked in {_shown(docs)})" if where else f" (no section {heading!r} to link it in)")


def save(fig: Figure, png: Path) -> None:
    """Render on the Agg canvas; no timestamp or version in the file, so an unchanged plot is an unchanged file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=DPI, metadata={"Software": None})


def link_image(
    docs: Path, heading: str, png: Path, alt: str, date: str | None = None, command: str | None = None
) -> bool:
    """Put `![alt](plots/<name>.png)` right below the first table of the section under `heading` (replacing this
    plot's earlier link); when the section's `Measured ...` line is not of the plotted run, say so under it.
    False if `docs` has no such section."""
    if not docs.exists():
        return False
    lines = docs.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return False
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    rel = Path(os.path.relpath(png, docs.parent)).as_posix()
    note_prefix = f"The plot (`{rel}`)"
    body: list[str] = []
    dropping = False
    for line in lines[start + 1 : end]:
        ours = (line.startswith("![") and line.rstrip().endswith(f"]({rel})")) or line.startswith(note_prefix)
        if ours or (dropping and not line.strip()):
            dropping = ours  # a blank line after a dropped one goes with it
            continue
        dropping = False
        body.append(line)
    section = "".join(body)
    block = ["\n", f"![{alt}]({rel})\n"]
    if date and f"Measured {date} " not in section:
        run = f"the run of {date}" + (f" (`{command}`)" if command else "")
        note = f"{note_prefix} is from {run}, not from the one in the table; rerun with `--json` to refresh both."
        block += ["\n", note + "\n"]
    first = next((i for i, line in enumerate(body) if line.startswith("|")), None)
    if first is None:
        at = len(body)
        while at and not body[at - 1].strip():
            at -= 1
    else:
        at = next((i for i in range(first, len(body)) if not body[i].startswith("|")), len(body))
    if at == len(body) or body[at].strip():
        block.append("\n")
    body[at:at] = block
    docs.write_text("".join(lines[: start + 1] + body + lines[end:]))
    return True


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _command(data: Mapping[str, Any]) -> str | None:
    settings = data.get("settings")
    if isinstance(settings, Mapping) and settings.get("command"):
        return str(settings["command"])
    return str(data["command"]) if data.get("command") else None


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _subtitle(data: Mapping[str, Any], extra: str = "") -> str:
    meta = data.get("meta") or {}
    cpus = f"{meta['nproc']} CPUs" if meta.get("nproc") else ""
    source = meta.get("fleetgate_source", "")
    parts = [f"measured {meta['date']}" if meta.get("date") else "", cpus, source, extra]
    return ", ".join(p for p in parts if p)


def _label_bars(ax: Axes, bars: Any, values: Sequence[float | None], spec: str, fontsize: float = 7) -> None:
    ax.bar_label(bars, labels=["" if v is None else format(v, spec) for v in values], fontsize=fontsize, padding=2)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and v == v else None


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
    fig = _figure(11, 11)
    axes = fig.subplots(len(panels), 1, sharex=True)
    width = 0.8 / max(len(targets), 1)
    xs = range(len(cells))
    for ax, (key, title, spec) in zip(axes, panels, strict=True):
        for i, target in enumerate(targets):
            values = [_number((by_key.get((target, c, s)) or {}).get(key)) for c, s in cells]
            offsets = [x - 0.4 + width * (i + 0.5) for x in xs]
            heights = [v if v is not None else 0.0 for v in values]
            bars = ax.bar(offsets, heights, width * 0.92, label=target, color=COLOURS.get(target))
            _label_bars(ax, bars, values, spec)
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
    fig.supxlabel(_subtitle(data, run + "; latency to the last byte"), fontsize=8)
    return fig


def gate_micro_figure(data: dict[str, Any], titles: Mapping[str, str] | None = None) -> Figure:
    """bench/gate_micro.py: p50 and p99 µs per scenario (and per phase, lighter), log scale."""
    rows = [r for r in data.get("rows") or [] if not r.get("na")]
    titles = titles or {}
    labels = [titles.get(r["scenario"], r["scenario"]) if r.get("phase") is None else f"↳ {r['what']}" for r in rows]
    fig = _figure(11, 1.2 + 0.45 * max(len(rows), 1))
    ax = fig.subplots()
    ys = list(range(len(rows)))
    h = 0.38
    for j, (key, name) in enumerate((("p50_us", "p50"), ("p99_us", "p99"))):
        values = [_number(r.get(key)) for r in rows]
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
    fig.supxlabel(_subtitle(data, run), fontsize=8)
    return fig


def router_micro_figure(data: dict[str, Any], target_p99_us: float | None = None) -> Figure:
    """bench/router_micro.py: `score` decision latency p50 and p99 (wall, and thread CPU) per index size."""
    runs = data.get("runs") or []
    fig = _figure(10, 5.5)
    ax = fig.subplots()
    series = (
        ("wall", "p50", "wall p50", COLOURS["p50"], None),
        ("wall", "p99", "wall p99", COLOURS["p99"], None),
        ("cpu", "p50", "CPU p50", COLOURS["p50"], "//"),
        ("cpu", "p99", "CPU p99", COLOURS["p99"], "//"),
    )
    width = 0.8 / len(series)
    for i, (kind, pct, name, colour, hatch) in enumerate(series):
        values = [_number((r.get(kind) or {}).get(pct)) for r in runs]
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
    fig.supxlabel(_subtitle(data, decisions + "; medians over rounds"), fontsize=8)
    return fig
