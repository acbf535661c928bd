"""`--base-src CHECKOUT`: another checkout's fleetgate measured next to this one, interleaved: before/after in one run.

A gateway from a checkout runs as `python -m fleetgate.cli.main` with `PYTHONPATH=<checkout>/src` (its package
first on the path, this venv's dependencies); an in-process measurement runs in a subprocess the same way (see
`worker`). Either way both sides share the machine, the load and the rounds, so drift hits them alike.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.report import fleetgate_source


@dataclass(frozen=True)
class Checkout:
    """A checkout of this repository whose `src/` is run instead of the installed package."""

    root: Path

    @property
    def src(self) -> Path:
        """Its source root (what goes on PYTHONPATH)."""
        return self.root / "src"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this environment) with this checkout's package first on the path."""
        return {**(os.environ if base is None else base), "PYTHONPATH": str(self.src)}

    def knows(self, text: str) -> bool:
        """Whether any module of its package mentions `text` (e.g. a setting it may predate)."""
        return any(text in path.read_text(errors="replace") for path in (self.src / "fleetgate").rglob("*.py"))

    def describe(self) -> str:
        """Which code it is: `git abc1234 in /path`, for the report."""
        return fleetgate_source(self.env())


def add_option(parser: argparse.ArgumentParser, what: str) -> None:
    """The `--base-src CHECKOUT` option; `what` says what runs from it and under which name."""
    parser.add_argument(
        "--base-src",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help=f"also run {what} from this checkout (e.g. a `git worktree` of the last release), interleaved with "
        "the others: before/after in one run (leaves the docs alone)",
    )


def from_option(parser: argparse.ArgumentParser, value: Path | None) -> Checkout | None:
    """The checkout `--base-src` names, or None; a parser error unless it holds src/fleetgate."""
    if value is None:
        return None
    if not (value / "src" / "fleetgate").is_dir():
        parser.error(f"--base-src {value} holds no src/fleetgate (give a checkout of this repository)")
    return Checkout(value.resolve())
