"""What an engine adapter declares: how to check health, list models and add engine-specific knobs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.engines.request_fields import LENGTH_ALIASES, OPENAI_FIELDS, STREAM_OPTIONS, allowed_body


@dataclass(frozen=True)
class MetricNames:
    """Where an engine's `/metrics` keeps the numbers the router reads (sample names, counters with `_total`)."""

    waiting: str
    running: str
    kv_usage: str | None = None  # a 0..1 gauge; llama.cpp has none
    prefix_queries: str | None = None  # None: the prompt token counter stands in
    prefix_hits: str | None = None  # None: the cached prompt token counter stands in
    prompt_tokens: str | None = None
    generation_tokens: str | None = None
    cached_prompt_tokens: str | None = None
    # llama.cpp's prompt counter leaves cached tokens out; add them back so every engine reports all prompt tokens.
    prompt_excludes_cached: bool = False

    def sample_names(self) -> frozenset[str]:
        """Every sample name to keep from a scrape."""
        names = (
            self.waiting,
            self.running,
            self.kv_usage,
            self.prefix_queries,
            self.prefix_hits,
            self.prompt_tokens,
            self.generation_tokens,
            self.cached_prompt_tokens,
        )
        return frozenset(n for n in names if n is not None)


@dataclass(frozen=True)
class EngineAdapter:
    """Per-engine facts the gateway needs; everything else is plain OpenAI-compatible HTTP."""

    kind: EngineKind
    health_path: str
    models_path: str = "/v1/models"
    metrics_path: str | None = "/metrics"
    reports_cached_tokens: bool = True
    metric_names: MetricNames | None = None
    props_path: str | None = None  # llama.cpp: `GET /props` gives `total_slots`, the capacity busy slots count against
    runtime_lora: bool = False  # adapters can be loaded while serving (vLLM, SGLang); llama.cpp fixes them at start
    # vLLM's `cache_salt` keeps one tenant's cached prefix from being hit (or timed) by another tenant.
    salts_cache: bool = False
    # The request fields a tenant may send this engine (engines/request_fields.py); the rest are dropped.
    request_fields: frozenset[str] = OPENAI_FIELDS
    stream_options: frozenset[str] = STREAM_OPTIONS
    # Set on every stream: llama.cpp's `timings_per_token` puts its running token counts on each chunk, so a stream
    # cut before the usage block (the client left) still bills exactly what the engine computed and cached.
    stream_fields: tuple[tuple[str, Any], ...] = ()

    @cached_property
    def accepted_fields(self) -> frozenset[str]:
        """The allowed fields and the output-length fields (which `prepare` replaces): what a usual body holds."""
        return self.request_fields | LENGTH_ALIASES

    def prepare(self, body: dict[str, Any], tenant_id: str, max_output_tokens: int | None = None) -> dict[str, Any]:
        """The body this engine gets: allowed fields only, the policy's output limit, the tenant's cache salt.

        Slot pins (`id_slot`) and per-request adapters (`lora`) never pass: a client's pin could queue behind or
        displace other tenants' requests and turns off llama-server's prompt-cache search (docs/architecture.md,
        "llama.cpp slots"); adapters are chosen by the gateway's catalog, never by a body field."""
        sent = allowed_body(body, self.request_fields, self.stream_options, max_output_tokens, self.accepted_fields)
        if self.stream_fields and sent.get("stream") is True:
            sent.update(self.stream_fields)
        if self.salts_cache:
            # Always overwritten, so a client can never name another tenant's salt; a salt the client sent still
            # splits its own tenant's cache further, as vLLM intends it.
            own = body.get("cache_salt")
            sent["cache_salt"] = f"fg:{tenant_id}:{own}" if isinstance(own, str) and own else f"fg:{tenant_id}"
        return sent


def model_ids(payload: Any) -> set[str]:
    """Model ids from an OpenAI `/v1/models` answer (llama.cpp also sends a `models` list; `data` is enough)."""
    if not isinstance(payload, dict):
        return set()
    data = payload.get("data")
    if not isinstance(data, list):
        return set()
    return {str(item["id"]) for item in data if isinstance(item, dict) and "id" in item}


def adapter_ids(payload: Any) -> set[str]:
    """LoRA adapters an OpenAI `/v1/models` answer lists: entries whose `parent` is another model (vLLM)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        return set()
    return {
        str(item["id"])
        for item in payload["data"]
        if isinstance(item, dict) and "id" in item and item.get("parent") not in (None, item["id"])
    }
