"""The CLI as scripts use it: `fleetgate ...` subprocesses against a fresh SQLite store per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FLEETGATE = [sys.executable, "-m", "fleetgate.cli.main"]


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    """Run `fleetgate *args` (asserting success unless ok=False) against this test's own database."""
    env = {**os.environ, "FLEETGATE_DATABASE__URL": f"sqlite:///{tmp_path / 'fg.db'}"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*FLEETGATE, *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    return run
