"""The import contracts in pyproject.toml hold for the tree, and they do catch a room importing upward."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(config)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    """Every room imports only rooms below it, money rooms stay off HTTP, no module cycles."""
    result = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_build(tmp_path: Path) -> None:
    """Billing importing the API (a money room reaching up into HTTP) is reported as a broken contract."""
    shutil.copytree(ROOT / "src" / "fleetgate", tmp_path / "fleetgate", ignore=shutil.ignore_patterns("__pycache__"))
    prices = tmp_path / "fleetgate" / "billing" / "prices.py"
    prices.write_text(prices.read_text() + "\nimport fleetgate.api.app  # noqa: E402,F401\n")
    result = _lint(tmp_path, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert "fleetgate.billing.prices -> fleetgate.api.app" in result.stdout
    assert "BROKEN" in result.stdout
