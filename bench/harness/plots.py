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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.report import DEFAULT_DOCS, update_docs, write_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.console import Console

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


def figure(width: float, height: float) -> Figure:
    """An empty figure with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def subtitle(data: Mapping[str, Any], extra: str = "") -> str:
    """The plot's footnote: when and where it was measured, which fleetgate, and `extra`."""
    meta = data.get("meta") or {}
    cpus = f"{meta['nproc']} CPUs" if meta.get("nproc") else ""
    source = meta.get("fleetgate_source", "")
    parts = [f"measured {meta['date']}" if meta.get("date") else "", cpus, source, extra]
    return ", ".join(p for p in parts if p)


def label_bars(ax: Axes, bars: Any, values: Sequence[float | None], spec: str, fontsize: float = 7) -> None:
    """Each bar's value above it (nothing for a missing one)."""
    ax.bar_label(bars, labels=["" if v is None else format(v, spec) for v in values], fontsize=fontsize, padding=2)


def number(v: Any) -> float | None:
    """`v` as a float if it is a number (not NaN), else None."""
    return float(v) if isinstance(v, int | float) and v == v else None


@dataclass(frozen=True)
class Plot:
    """One benchmark's plot: its file name, how to draw it, and the docs section it belongs under."""

    name: str
    draw: Callable[[dict[str, Any]], Figure]
    heading: str
    alt: str

    def publish(self, data: dict[str, Any], docs: Path | None) -> str:
        """Draw `data` next to `docs` and link it there; without docs (`--no-docs`), only draw it in docs/plots/."""
        return publish(self.name, self.draw, data, docs or DEFAULT_DOCS, self.heading, self.alt, link=docs is not None)

    def redraw(self, result: Path, docs: Path | None) -> str:
        """`--plot-from`: only the plot (and its docs link) of a saved `--json` result."""
        return self.publish(load(result), docs)


def write_outputs(
    console: Console,
    plot: Plot,
    section: str,
    docs: Path | None,
    json_path: Path | None,
    result: dict[str, Any],
    plot_data: dict[str, Any] | None = None,
) -> None:
    """What a run leaves behind: its raw numbers (`--json`), and its docs section with its plot (unless
    `--no-docs`); the plot is drawn from `plot_data`, or from `result`."""
    from rich.markup import escape

    if json_path is not None:
        write_json(json_path, result)
        console.print(f"raw numbers: {json_path}")
    if docs is not None:
        update_docs(docs, plot.heading, section)
        console.print(f"updated {docs}")
        console.print(escape(plot.publish(plot_data if plot_data is not None else result, docs)))
