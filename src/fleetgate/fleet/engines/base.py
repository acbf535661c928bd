"""What an engine adapter declares: how to check health, list models and add engine-specific knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetgate.config import EngineKind


@dataclass(frozen=True)
class EngineAdapter:
    """Per-engine facts the gateway needs; everything else is plain OpenAI-compatible HTTP."""

    kind: EngineKind
    health_path: str
    models_path: str = "/v1/models"
    metrics_path: str | None = "/metrics"
    reports_cached_tokens: bool = True

    def prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add engine-specific request fields (none by default)."""
        return body


def model_ids(payload: Any) -> set[str]:
    """Model ids from an OpenAI `/v1/models` answer (llama.cpp also sends a `models` list; `data` is enough)."""
    if not isinstance(payload, dict):
        return set()
    data = payload.get("data")
    if not isinstance(data, list):
        return set()
    return {str(item["id"]) for item in data if isinstance(item, dict) and "id" in item}
