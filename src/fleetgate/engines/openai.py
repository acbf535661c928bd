"""A generic OpenAI-compatible server: only what the OpenAI API promises, nothing engine-specific.

It is also what an engine named only by its URL is until its model list says which engine it is (the health
check reads `owned_by` and switches the replica to that dialect).
"""

from __future__ import annotations

from typing import Any

from fleetgate.engines.base import EngineAdapter


def _context(item: dict[str, Any]) -> Any:
    # Either shape OpenAI-compatible servers use: `max_model_len` (vLLM, SGLang) or `meta.n_ctx` (llama.cpp).
    meta = item.get("meta")
    return item.get("max_model_len") or (meta.get("n_ctx") if isinstance(meta, dict) else None)


# Its model list is the only endpoint we can count on: it is the health check too; no metrics, tokenizer,
# counters or adapter endpoints.
OPENAI = EngineAdapter(kind="openai", health_path="/v1/models", model_context=_context, metrics_path=None)
