"""LiteLLM proxy as a comparison target: its own venv (made once, reused), stateless, offline, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.procs import Child, start_ready

DEFAULT_VENV = Path.home() / ".cache" / "fleetgate" / "bench" / "litellm-venv"
MASTER_KEY = "sk-bench-0123456789abcdef"
# Written only after a complete install, so a venv whose install was interrupted is finished on the next run.
_READY_MARKER = ".fleetgate-bench-ready"
_INSTALL_TIMEOUT = 30 * 60

# LiteLLM reaches out to the internet at import and start-up unless told to use its bundled copies; this machine
# has no route out, so any such call would hang or fail. Each flag below switches one of those off.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # model price map (otherwise fetched from GitHub at import)
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "True",  # no database, so no Prisma migrations (their engines are downloads)
    "LITELLM_MODE": "PRODUCTION",  # DEV mode loads a .env file from the working directory
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Anything that would switch LiteLLM to its database mode or point it elsewhere is removed from its environment.
_DROP_ENV = (
    "DATABASE_URL",
    "DIRECT_URL",
    "REDIS_HOST",
    "REDIS_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "PYTHONPATH",  # LiteLLM runs on its own venv only
)


def _run_logged(args: list[str], say: Callable[[str], None], timeout: float) -> tuple[int, str]:
    """Run a command, echoing its progress lines; return (exit code, last lines)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    tail: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            # pip prints a line per package; the interesting ones are enough to show it is moving.
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR", "error")):
                say(line[:160])
            if time.monotonic() > deadline:
                tail.append(f"(stopped after {timeout:.0f}s)")
                break
    finally:
        # Interrupted, timed out or done: never leave the installer running behind us.
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        proc.stdout.close()
    return code, "\n".join(tail)


def ensure_venv(venv: Path, say: Callable[[str], None]) -> Path:
    """Return the venv's python with `litellm[proxy]` installed, installing it on first use; raise RuntimeError."""
    python = venv / "bin" / "python"
    if (venv / _READY_MARKER).is_file() and python.exists():
        return python
    if not python.exists():
        say(f"creating a venv for LiteLLM at {venv} (first use only)")
        venv.parent.mkdir(parents=True, exist_ok=True)
        code, tail = _run_logged([sys.executable, "-m", "venv", str(venv)], say, 300)
        if code != 0:
            raise RuntimeError(f"could not create the venv {venv}:\n{tail}")
    say("installing litellm[proxy] from PyPI (takes a few minutes, first use only)")
    for args in (
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "litellm[proxy]"],
    ):
        code, tail = _run_logged(args, say, _INSTALL_TIMEOUT)
        if code != 0:
            raise RuntimeError(f"`{' '.join(args[2:])}` failed (exit {code}):\n{tail}")
    check = subprocess.run(
        [str(python), "-c", "import litellm.proxy.proxy_cli, importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        env=litellm_env(),
        timeout=300,
    )
    if check.returncode != 0:
        raise RuntimeError(f"litellm is installed but does not import:\n{check.stderr[-2000:]}")
    (venv / _READY_MARKER).write_text(check.stdout.strip() + "\n")
    return python


def installed_version(venv: Path) -> str:
    """The LiteLLM version recorded at install time."""
    try:
        return (venv / _READY_MARKER).read_text().strip()
    except OSError:
        return "?"


def litellm_env() -> dict[str, str]:
    """The environment LiteLLM runs with: ours, minus database/proxy settings, plus the offline switches."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(OFFLINE_ENV)
    return env


def write_config(workdir: Path, upstream_port: int) -> Path:
    """A stateless proxy config: model `fake` -> the fake upstream, one master key, no database."""
    config = workdir / "litellm.yaml"
    # JSON is valid YAML, and needs no YAML library in this process.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "fake",
                        "litellm_params": {
                            "model": "openai/fake",
                            "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                            "api_key": "sk-fake-upstream",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False},
                "general_settings": {"master_key": MASTER_KEY},
            },
            indent=2,
        )
    )
    return config


def write_log_config(workdir: Path) -> Path:
    """Uvicorn logging without per-request access lines: the gateway writes none either, so neither pays for it."""
    path = workdir / "litellm-logging.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                "loggers": {
                    "uvicorn": {"handlers": ["default"], "level": "WARNING"},
                    "uvicorn.error": {"level": "WARNING"},
                    "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
                },
            }
        )
    )
    return path


def start_litellm(python: Path, workdir: Path, upstream_port: int, port: int, timeout: float = 240.0) -> Child:
    """Start the LiteLLM proxy and wait for /health/liveliness; raise harness.procs.StartError on failure."""
    config = write_config(workdir, upstream_port)
    log_config = write_log_config(workdir)
    args = [
        str(python),
        "-m",
        "litellm.proxy.proxy_cli",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log_config",
        str(log_config),
    ]
    url = f"http://127.0.0.1:{port}/health/liveliness"
    return start_ready("litellm", args, workdir / "litellm.log", url, timeout, env=litellm_env(), cwd=workdir)
