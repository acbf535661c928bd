"""Building engines on a fake clock for the simulator's unit tests."""

from __future__ import annotations

from typing import Any

from fleetgate.sim.engine import Engine, FakeClock, Sequence
from fleetgate.sim.lora import LoraRegistry
from fleetgate.sim.profiles import load_profile
from fleetgate.sim.text import TextGenerator

BS = 4  # small blocks keep hand-computed cases readable


def make_engine(**overrides: Any) -> tuple[Engine, FakeClock]:
    """An engine with 4-token blocks and room for a few short sequences unless overridden."""
    settings: dict[str, Any] = {
        "block_size": BS,
        "kv_blocks": 64,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 256,
        "max_model_len": 256,
        "max_loras": 2,
    }
    settings.update(overrides)
    profile = load_profile("h100-llama3-8b").with_overrides(**settings)
    clock = FakeClock()
    return Engine(profile, clock, lora=LoraRegistry(profile.max_loras)), clock


def tokens(n: int, start: int = 100) -> list[int]:
    """`n` distinct token ids starting at `start`."""
    return list(range(start, start + n))


def submit(
    engine: Engine,
    clock: FakeClock,
    prompt: list[int],
    *,
    max_tokens: int = 4,
    salt: str | None = None,
    adapter: str | None = None,
    rid: str = "r",
    natural: int = 10_000,
) -> Sequence:
    """Queue a request that runs to `max_tokens` (its natural length is far away unless given)."""
    gen = TextGenerator(7, natural, natural)
    seq = Sequence(rid, prompt, max_tokens, gen, clock.now(), adapter=adapter, salt=salt)
    engine.add(seq)
    return seq
