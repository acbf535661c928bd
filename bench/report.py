"""What every benchmark report needs: the machine, which fleetgate ran, and its section in docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADER = (
    "# Benchmarks\n\nMeasured numbers. Each section is written by the script named in its heading; "
    "rerun that script to refresh it.\n\n"
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


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


def fleetgate_source() -> str:
    """Which fleetgate code runs: its git commit (and whether its src/ differs from it), else its path."""
    probe = subprocess.run(
        [sys.executable, "-c", "import fleetgate; print(fleetgate.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        return "fleetgate does not import: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    package = Path(probe.stdout.strip()).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=60)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return f"fleetgate from {package}"
    top = Path(git("rev-parse", "--show-toplevel"))
    where = "" if top == REPO else f" in {top}"
    dirty = git("status", "--porcelain", "--", str(package))
    return f"git {head}{where}" + (" + uncommitted changes" if dirty else "")


def loadavg(values: Sequence[float]) -> str:
    """`1.00 / 0.90 / 0.80`."""
    return " / ".join(f"{v:.2f}" for v in values)


def machine_line(meta: dict[str, Any]) -> str:
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
