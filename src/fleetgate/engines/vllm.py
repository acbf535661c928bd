"""vLLM (0.32, OpenAI server): its request fields, metrics, tokenizer, token counters, LoRA endpoints, cache salt.

Measured behaviour is in ../shared/ENGINES.md; the contract tests (tests/contract) hold a real vLLM to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fleetgate.engines.base import EngineAdapter, JsonPost, MetricNames, max_model_len
from fleetgate.engines.counters import (
    PROCESS_START,
    CountersError,
    EngineCounters,
    counter_sums,
    need,
    started_at,
)
from fleetgate.engines.prometheus import samples
from fleetgate.engines.request_fields import OPENAI_FIELDS, STREAM_OPTIONS

# OpenAI's fields plus the options of vLLM's ChatCompletionRequest / CompletionRequest. Never `priority` (its own
# scheduling order), `kv_transfer_params`, `vllm_xargs`, `prompt_logprobs`, `use_beam_search`.
FIELDS = OPENAI_FIELDS | {
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "bad_words",
    "allowed_token_ids",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "structured_outputs",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "documents",
    "truncate_prompt_tokens",
    "include_reasoning",
    "thinking_token_budget",
    "return_token_ids",
    "return_tokens_as_token_ids",
    "cache_salt",
}
# vLLM also streams running usage when asked.
STREAM_OPTION_FIELDS = STREAM_OPTIONS | {"continuous_usage_stats"}

# Names from vLLM's v1 metrics/loggers.py, labelled `engine` and `model_name` (one series per data-parallel engine).
PROMPT_TOKENS = "vllm:prompt_tokens_total"  # includes cached tokens
CACHED_TOKENS = "vllm:prompt_tokens_cached_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
# Newer vLLM splits prompt tokens by where they came from; `source="local_compute"` is the fresh part.
BY_SOURCE = "vllm:prompt_tokens_by_source_total"
METRICS = MetricNames(
    waiting="vllm:num_requests_waiting",
    running="vllm:num_requests_running",
    kv_usage="vllm:kv_cache_usage_perc",
    prefix_queries="vllm:prefix_cache_queries_total",
    prefix_hits="vllm:prefix_cache_hits_total",
    prompt_tokens=PROMPT_TOKENS,
    generation_tokens=GENERATION_TOKENS,
    cached_prompt_tokens=CACHED_TOKENS,
)
_COUNTERS = frozenset({PROMPT_TOKENS, CACHED_TOKENS, GENERATION_TOKENS, PROCESS_START})


def read_counters(text: str) -> EngineCounters:
    """The counters: `prompt_tokens_total` includes cached tokens, `prompt_tokens_cached_total` (when present)
    gives the cached part, `generation_tokens_total` is output; `process_start_time_seconds` says when they
    began."""
    sums = counter_sums(text, _COUNTERS)
    total = need(sums, PROMPT_TOKENS)
    completion = need(sums, GENERATION_TOKENS)
    cached = sums.get(CACHED_TOKENS)
    computed = total - round(cached) if cached is not None else _fresh_by_source(text)
    return EngineCounters(computed, total, completion, started_at(sums))


def _fresh_by_source(text: str) -> int | None:
    found: int | None = None
    try:
        for sample in samples(text, frozenset({BY_SOURCE})):
            if sample.labels.get("source") == "local_compute":
                found = (found or 0) + round(sample.value)
    except ValueError as exc:
        raise CountersError(f"unreadable Prometheus text: {exc}") from None
    return found


async def count_prompt(payload: dict[str, Any], post: JsonPost) -> int | None:
    """vLLM's `/tokenize` takes the chat or completion request itself and counts with the same template and
    tokenizer the completion bills with (SGLang answers the same shape)."""
    body: dict[str, Any] = {"model": payload.get("model")}
    if "messages" in payload:
        body["messages"] = payload["messages"]
    else:
        body["prompt"] = payload.get("prompt")
    result = await post("/tokenize", body)
    count = result.get("count") if isinstance(result, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


@dataclass(frozen=True)
class VllmLora:
    """`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` (with VLLM_ALLOW_RUNTIME_LORA_UPDATING) and
    `POST /v1/unload_lora_adapter {"lora_name"}`."""

    load_path: str = "/v1/load_lora_adapter"
    unload_path: str = "/v1/unload_lora_adapter"

    def load_request(self, name: str, path: str) -> tuple[str, dict[str, str]]:
        """The path and body that load adapter `name` from `path`."""
        return self.load_path, {"lora_name": name, "lora_path": path}

    def unload_request(self, name: str) -> tuple[str, dict[str, str]]:
        """The path and body that unload adapter `name`."""
        return self.unload_path, {"lora_name": name}

    def load_outcome(self, status: int, detail: str) -> Literal["loaded", "already"] | None:
        """200 loaded; 400 "already loaded" when another gateway process loaded it first: that is success too."""
        if status == 200:
            return "loaded"
        return "already" if status == 400 and "already" in detail.lower() else None

    def unload_outcome(self, status: int) -> Literal["unloaded", "gone"] | None:
        """200 unloaded; 404 means it is already gone."""
        return "unloaded" if status == 200 else "gone" if status == 404 else None


VLLM = EngineAdapter(
    kind="vllm",
    owned_by="vllm",
    health_path="/health",
    model_context=max_model_len,
    metric_names=METRICS,
    count_prompt=count_prompt,
    read_counters=read_counters,
    lora=VllmLora(),
    # `cache_salt` keeps one tenant's cached prefix from being hit (or timed) by another tenant.
    salts_cache=True,
    request_fields=FIELDS,
    stream_options=STREAM_OPTION_FIELDS,
)
