"""Local vLLM replicas: the model folder vLLM loads (converted from the GGUF once, cached) and the command line."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from fleetgate.config import LocalFleetConfig
from fleetgate.domain.engine_kind import EngineKind
from fleetgate.domain.errors import EngineBuildError
from fleetgate.domain.paths import cache_dir
from fleetgate.local.launcher import LaunchSpec
from fleetgate.local.vllm_env import VllmEnv

SCRIPTS = Path(__file__).with_name("vllm_scripts")
_CONVERT_TIMEOUT = 900.0


def script(name: str) -> Path:
    """A helper script run by the vLLM environment's Python (it has torch, transformers, peft; we do not)."""
    return SCRIPTS / name


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]


def converted_dir(gguf: Path, dtype: str) -> Path:
    """Where the Hugging Face folder converted from this GGUF lives (keyed by file identity and dtype)."""
    return cache_dir() / "models" / f"{gguf.stem}-{dtype}-{_fingerprint(gguf)}"


def ensure_hf_model(env: VllmEnv, gguf: Path, dtype: str) -> Path:
    """Convert the GGUF to a Hugging Face folder once (~45-70 s here), offline; later calls reuse it."""
    out = converted_dir(gguf, dtype)
    if not (out / "config.json").is_file():
        _build_into(
            out, [str(env.python), str(script("convert_gguf.py")), str(gguf)], [dtype], f"converting {gguf.name}"
        )
    return out


def _build_into(out: Path, cmd: list[str], tail: list[str], what: str) -> None:
    """Run `cmd STAGING *tail` (a script of the vLLM environment), then move STAGING to `out`: never half a folder."""
    staging = out.with_name(out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = subprocess.run(
            [*cmd, str(staging), *tail],
            capture_output=True,
            text=True,
            timeout=_CONVERT_TIMEOUT,
            check=False,
            env=_offline_env(),
        )
    except subprocess.TimeoutExpired:
        raise EngineBuildError(f"{what} took over {_CONVERT_TIMEOUT:.0f}s") from None
    if result.returncode != 0:
        raise EngineBuildError(f"{what} failed: {result.stderr.strip()[-800:]}")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(staging, out)


def _offline_env() -> dict[str, str]:
    # Only the package registries are reachable: never let transformers or vLLM try a model hub.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def vllm_server_env(index: int, kv_cache_space_gb: int) -> dict[str, str]:
    """Environment of one replica: one core each (vLLM's `auto` binding put two replicas on the same core here)."""
    cores = os.cpu_count() or 1
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_space_gb),
        "VLLM_CPU_OMP_THREADS_BIND": str(index % cores),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }


class VllmLauncher:
    """Local vLLM replicas, started as `python -m vllm.entrypoints.openai.api_server` from the cached environment."""

    kind: EngineKind = "vllm"
    id_prefix = "vllm"

    def __init__(self, cfg: LocalFleetConfig, env: VllmEnv, model_dir: Path) -> None:
        self.cfg = cfg.vllm
        self.env = env
        self.model_dir = model_dir
        self.count = cfg.vllm.replicas
        self.start_timeout = cfg.vllm.start_timeout
        self.model_alias = cfg.model_alias

    def args(self, port: int) -> list[str]:
        """vLLM's arguments: prefix caching, prompt-token details (else `cached_tokens` is null) and LoRA on."""
        cfg = self.cfg
        args = [
            str(self.env.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model_alias,
            "--dtype",
            cfg.dtype,
            "--max-model-len",
            str(cfg.max_model_len),
            "--max-num-seqs",
            str(cfg.max_num_seqs),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--enable-lora",
            "--max-loras",
            str(cfg.max_loras),
            "--max-cpu-loras",
            str(cfg.max_loras),
            "--max-lora-rank",
            str(cfg.max_lora_rank),
            "--disable-uvicorn-access-log",
        ]
        if cfg.enforce_eager:
            args.append("--enforce-eager")
        args.extend(cfg.extra_args)
        return args

    def spec(self, port: int, index: int) -> LaunchSpec:
        """The replica's process."""
        return LaunchSpec(self.args(port), vllm_server_env(index, self.cfg.kv_cache_space_gb))


def demo_adapter(env: VllmEnv, model_dir: Path, seed: int, rank: int = 8) -> Path:
    """A small random LoRA adapter for `model_dir` (seeded, cached): for tests, benchmarks and demos."""
    out = cache_dir() / "adapters" / f"{model_dir.name}-seed{seed}-r{rank}"
    if not (out / "adapter_config.json").is_file():
        cmd = [str(env.python), str(script("make_lora.py")), str(model_dir)]
        _build_into(out, cmd, [str(seed), str(rank)], f"making adapter seed {seed}")
    return out
