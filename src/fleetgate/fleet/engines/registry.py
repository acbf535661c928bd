"""The engine adapters by kind."""

from __future__ import annotations

from fleetgate.config import EngineKind
from fleetgate.fleet.engines.base import EngineAdapter

ADAPTERS: dict[EngineKind, EngineAdapter] = {
    # llama-server answers /health with 503 while loading, 200 when ready.
    "llamacpp": EngineAdapter(kind="llamacpp", health_path="/health"),
    "vllm": EngineAdapter(kind="vllm", health_path="/health"),
    "sglang": EngineAdapter(kind="sglang", health_path="/health"),
    # An unknown OpenAI-compatible server: its model list is the only endpoint we can count on.
    "openai": EngineAdapter(kind="openai", health_path="/v1/models", metrics_path=None),
}


def adapter_for(kind: EngineKind) -> EngineAdapter:
    """The adapter for an engine kind."""
    return ADAPTERS[kind]
