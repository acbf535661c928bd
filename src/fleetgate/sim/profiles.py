"""Profiles: the engine's capacity and latency model, loaded from YAML (shipped by name, or any path)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetgate.domain.errors import ConfigError
from fleetgate.sim.faults import Faults

DEFAULT_PROFILE = "smollm2-llamacpp-local"


class Profile(BaseModel):
    """One engine kind on one accelerator: capacity, scheduler limits, and timing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    # capacity and scheduler limits (vLLM's --max-model-len, --block-size, #GPU blocks, --max-num-seqs ...)
    max_model_len: int = Field(4096, ge=16)
    block_size: int = Field(16, ge=1)
    kv_blocks: int = Field(512, ge=1)
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    max_loras: int = Field(4, ge=0)
    # blocks: vLLM's prefix cache (hash-addressed blocks shared by every sequence, LRU-evicted, whole blocks hit);
    # slots: llama-server's (each of max_num_seqs slots keeps its last sequence's tokens; a request takes the idle
    # slot with the most similar prompt, above slot_prompt_similarity (0: never), else the least recently used,
    # searching the host-RAM prompt cache when it would lose most of the slot's tokens, and reuses
    # their common prefix token by token)
    prefix_cache: Literal["blocks", "slots"] = "blocks"
    slot_prompt_similarity: float = Field(0.1, ge=0, le=1)
    prompt_cache_tokens: int = Field(0, ge=0, description="slots: llama-server's --cache-ram, in tokens (0: off)")
    cache_idle_slots: bool = Field(True, description="slots: llama-server's --cache-idle-slots (its default: on)")
    # timing: a step costs decode_base_ms + decode_per_seq_ms * decoding seqs
    # + decode_per_ktoken_ms * (context tokens of the batch / 1000) + prefill tokens / prefill_tokens_per_s
    prefill_tokens_per_s: float = Field(gt=0)
    decode_base_ms: float = Field(ge=0)
    decode_per_seq_ms: float = Field(0.0, ge=0)
    decode_per_ktoken_ms: float = Field(0.0, ge=0)
    lora_load_s: float = Field(0.1, ge=0)
    cold_load_s: float = Field(1.0, ge=0)
    # how long answers are when the client does not cap them (uniform in [min, max] per seed)
    output_tokens_min: int = Field(16, ge=1)
    output_tokens_max: int = Field(128, ge=1)
    faults: Faults = Field(default_factory=Faults)

    def step_seconds(self, *, prefill_tokens: int, decode_seqs: int, context_tokens: int) -> float:
        """Model time of one engine step with this batch."""
        ms = (
            self.decode_base_ms
            + self.decode_per_seq_ms * decode_seqs
            + self.decode_per_ktoken_ms * context_tokens / 1000
        )
        return ms / 1000.0 + prefill_tokens / self.prefill_tokens_per_s

    def with_overrides(self, **changes: Any) -> Profile:
        """A copy with the given fields replaced (None values are ignored), validated again."""
        data = self.model_dump()
        data.update({k: v for k, v in changes.items() if v is not None})
        return _validate(data, f"profile {self.name!r} with overrides")

    def with_faults(self, **changes: Any) -> Profile:
        """A copy with the given fault settings replaced (None values are ignored), the others kept."""
        faults = {**self.faults.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
        return self.with_overrides(faults=faults)


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in the package."""
    folder = resources.files("fleetgate.sim") / "profiles"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _validate(data: Any, where: str) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"{where}: {field}: {first['msg']}") from exc


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """A shipped profile by name, or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"profile file {path} does not exist")
        text = path.read_text()
        where = str(path)
    else:
        res = resources.files("fleetgate.sim") / "profiles" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown profile {name_or_path!r}; shipped: {', '.join(shipped_profiles())}")
        text = res.read_text()
        where = f"profile {name_or_path}"
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return _validate(data, where)
