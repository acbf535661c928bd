"""What every CLI command shares: loading config, failing with a clear message, printing JSON or Rich."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from fleetgate.config import Config, load_config
from fleetgate.domain.errors import FleetgateError
from fleetgate.domain.paths import default_run_dir
from fleetgate.local.rundir import RunDir

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = typer.Option(
    None, "--config", "-c", help="fleetgate.yaml to read (default: ./fleetgate.yaml if present)"
)
JsonOption = typer.Option(False, "--json", help="machine-readable output")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error to stderr and exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def load(path: Path | None) -> Config:
    """Load config or exit with the field-level message."""
    try:
        return load_config(path)
    except FleetgateError as exc:
        fail(str(exc))


def run_dir_for(config: Config) -> RunDir:
    """The run directory from config, env or the default."""
    return RunDir(config.run_dir or default_run_dir())


def print_json(data: Any) -> None:
    """Write JSON to stdout for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def setup_logging(level: int = logging.INFO) -> None:
    """Rich log output for long-running commands."""
    logging.basicConfig(
        level=level, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)], force=True
    )


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
