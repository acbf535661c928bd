"""The engine dialects by kind: the one place that lists them."""

from __future__ import annotations

from typing import Any

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.engines.base import EngineAdapter
from fleetgate.engines.llamacpp import LLAMACPP
from fleetgate.engines.openai import OPENAI
from fleetgate.engines.sglang import SGLANG
from fleetgate.engines.vllm import VLLM

ADAPTERS: dict[EngineKind, EngineAdapter] = {a.kind: a for a in (LLAMACPP, VLLM, SGLANG, OPENAI)}
_SIGNED: dict[str, EngineKind] = {a.owned_by: a.kind for a in ADAPTERS.values() if a.owned_by is not None}


def adapter_for(kind: EngineKind) -> EngineAdapter:
    """The adapter for an engine kind."""
    return ADAPTERS[kind]


def reconcilable(kind: str) -> EngineAdapter | None:
    """The adapter for a kind named outside config (a run dir, the CLI) if its token counters can be read."""
    adapter = next((a for a in ADAPTERS.values() if a.kind == kind), None)
    return adapter if adapter is not None and adapter.read_counters is not None else None


def reconcilable_kinds() -> tuple[EngineKind, ...]:
    """The kinds whose token counters reconcile reads."""
    return tuple(kind for kind, adapter in ADAPTERS.items() if adapter.read_counters is not None)


def detect_kind(listing: Any) -> EngineKind | None:
    """The engine behind a plain `--engine URL`, from `owned_by` in its model list (vLLM, llama.cpp and SGLang
    each sign their entries), so its metrics, slots, LoRA endpoints and cache salting are used without config."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return None
    for item in listing["data"]:
        if isinstance(item, dict) and (kind := _SIGNED.get(str(item.get("owned_by", "")).lower())) is not None:
            return kind
    return None
