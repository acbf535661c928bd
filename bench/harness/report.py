"""What every benchmark report needs: the machine, which fleetgate ran, tables, verdicts, and its docs section."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADER = (
    "# Benchmarks\n\nMeasured numbers. Each section is written by the script named in its heading; "
    "rerun that script to refresh it.\n\n"
)


def add_output_options(p: argparse.ArgumentParser, docs: bool = True, plot: bool = True) -> None:
    """`--json PATH`, `--docs PATH` (with `docs`), `--no-docs` and `--plot-from JSON` (with `plot`)."""
    p.add_argument("--json", type=Path, default=None, dest="json_path", help="write raw numbers to this JSON file")
    if docs:
        p.add_argument("--docs", type=Path, default=None, help=f"Markdown file to update (default {DEFAULT_DOCS})")
    p.add_argument("--no-docs", action="store_true", help="print only; leave the Markdown file alone")
    if plot:
        p.add_argument(
            "--plot-from",
            type=Path,
            default=None,
            metavar="JSON",
            help="only redraw the plot and its docs link from a --json result",
        )


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(dists: Sequence[str]) -> dict[str, Any]:
    """CPU count and model, load average and the versions of `dists`, for the report header."""
    versions = {}
    for dist in ("fleetgate", *dists):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "-"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "fleetgate_source": fleetgate_source(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "versions": versions,
    }


def _git(package: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


def fleetgate_source(env: Mapping[str, str] | None = None) -> str:
    """Which fleetgate code runs (with `env`, default this one): its git commit (and whether its src/ differs from
    it), else its path."""
    probe = subprocess.run(
        [sys.executable, "-c", "import fleetgate; print(fleetgate.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else dict(env),
    )
    if probe.returncode != 0:
        return "fleetgate does not import: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    package = Path(probe.stdout.strip()).resolve().parent
    head = _git(package, "rev-parse", "--short", "HEAD")
    if not head:
        return f"fleetgate from {package}"
    top = Path(_git(package, "rev-parse", "--show-toplevel"))
    where = "" if top == REPO else f" in {top}"
    dirty = _git(package, "status", "--porcelain", "--", str(package))
    return f"git {head}{where}" + (" + uncommitted changes" if dirty else "")


def loadavg(values: Sequence[float]) -> str:
    """`1.00 / 0.90 / 0.80`."""
    return " / ".join(f"{v:.2f}" for v in values)


def machine_line(meta: Mapping[str, Any]) -> str:
    """The report's `Measured ... on ...` sentence."""
    la0, la1 = meta["loadavg_start"], meta.get("loadavg_end", (float("nan"),) * 3)
    return (
        f"Measured {meta['date']} on {meta['nproc']} CPUs ({meta['cpu_model']}), Python {meta['python']}, "
        f"fleetgate {meta['versions']['fleetgate']} ({meta['fleetgate_source']}); "
        f"load average {loadavg(la0)} at start, {loadavg(la1)} at end."
    )


def command_line() -> str:
    """How this run was started, as a shell command (with PYTHONPATH, which decides which fleetgate runs)."""
    python = Path(sys.executable)
    shown = os.path.relpath(python) if python.is_relative_to(Path.cwd()) else str(python)
    return " ".join(
        ([f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])}"] if os.environ.get("PYTHONPATH") else [])
        + [shlex.join([shown, *sys.argv])]
    )


def update_docs(path: Path, heading: str, section: str) -> None:
    """Replace the section under `heading` in `path` (up to the next `## ` heading), or append it."""
    text = path.read_text() if path.exists() else DOCS_HEADER
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def section_head(heading: str, meta: Mapping[str, Any], command: str, setup: str | None = None) -> list[str]:
    """The first lines of a docs section: its heading, the machine, the command and (if given) the setup."""
    lines = [heading, "", machine_line(meta), "", f"Command: `{command}`", ""]
    return lines + ([setup, ""] if setup is not None else [])


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], left: Iterable[str] | None = None) -> list[str]:
    """A Markdown table's lines; the columns named in `left` are left-aligned and the others right-aligned
    (every column left-aligned without `left`)."""
    lefts = set(head if left is None else left)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" if h in lefts else "---:" for h in head) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def print_table(
    console: Console,
    title: str,
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    left: Iterable[str] = (),
    whole: Iterable[str] = (),
) -> None:
    """A Rich table on the console; the columns named in `left` are left-aligned, those in `whole` never wrapped."""
    lefts, wholes = set(left), set(whole)
    table = Table(title=title, header_style="bold")
    for col in head:
        table.add_column(col, justify="left" if col in lefts else "right", no_wrap=col in wholes)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@dataclass
class Verdict:
    """One goal, the number measured against it, and whether it was met (None when it cannot be judged)."""

    goal: str
    measured: str
    ok: bool | None

    def line(self, markdown: bool = False) -> str:
        """`PASS|FAIL|n/a goal: measured`."""
        word = {True: "PASS", False: "FAIL", None: "n/a"}[self.ok]
        return f"{f'**{word}**' if markdown else word} {self.goal}: {self.measured}"

    def as_dict(self) -> dict[str, Any]:
        """For the JSON result."""
        return {"goal": self.goal, "measured": self.measured, "ok": self.ok}


def print_verdicts(console: Console, checks: Iterable[Verdict]) -> None:
    """Each verdict on the console, green, red or yellow."""
    for v in checks:
        colour = {True: "green", False: "red", None: "yellow"}[v.ok]
        console.print(f"[{colour}]{escape(v.line())}[/]")


def write_json(path: Path, data: Any) -> None:
    """The raw numbers of a run, indented (anything JSON cannot hold written as a string)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def settings_dict(settings: object) -> dict[str, Any]:
    """A settings dataclass as JSON-ready values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
