"""The engine adapters by kind."""

from __future__ import annotations

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.engines.base import EngineAdapter, MetricNames
from fleetgate.engines.request_fields import LLAMACPP_FIELDS, SGLANG_FIELDS, VLLM_FIELDS, VLLM_STREAM_OPTIONS

# Names as the engines print them (llama.cpp recorded from llama-server 11434 here; vLLM from v1
# metrics/loggers.py, labelled `engine` and `model_name`; SGLang from srt/metrics/collector.py).
LLAMACPP_METRICS = MetricNames(
    waiting="llamacpp:requests_deferred",
    running="llamacpp:requests_processing",
    prompt_tokens="llamacpp:prompt_tokens_total",
    generation_tokens="llamacpp:tokens_predicted_total",
    cached_prompt_tokens="llamacpp:prompt_tokens_cached_total",
    prompt_excludes_cached=True,
)
VLLM_METRICS = MetricNames(
    waiting="vllm:num_requests_waiting",
    running="vllm:num_requests_running",
    kv_usage="vllm:kv_cache_usage_perc",
    prefix_queries="vllm:prefix_cache_queries_total",
    prefix_hits="vllm:prefix_cache_hits_total",
    prompt_tokens="vllm:prompt_tokens_total",
    generation_tokens="vllm:generation_tokens_total",
    cached_prompt_tokens="vllm:prompt_tokens_cached_total",
)
SGLANG_METRICS = MetricNames(
    waiting="sglang:num_queue_reqs",
    running="sglang:num_running_reqs",
    kv_usage="sglang:token_usage",
    prompt_tokens="sglang:prompt_tokens_total",
    generation_tokens="sglang:generation_tokens_total",
    cached_prompt_tokens="sglang:cached_tokens_total",
)

ADAPTERS: dict[EngineKind, EngineAdapter] = {
    # llama-server answers /health with 503 while loading, 200 when ready.
    "llamacpp": EngineAdapter(
        kind="llamacpp",
        health_path="/health",
        metric_names=LLAMACPP_METRICS,
        props_path="/props",
        request_fields=LLAMACPP_FIELDS,
        stream_fields=(("timings_per_token", True),),
    ),
    "vllm": EngineAdapter(
        kind="vllm",
        health_path="/health",
        metric_names=VLLM_METRICS,
        runtime_lora=True,
        salts_cache=True,
        request_fields=VLLM_FIELDS,
        stream_options=VLLM_STREAM_OPTIONS,
    ),
    "sglang": EngineAdapter(
        kind="sglang",
        health_path="/health",
        metric_names=SGLANG_METRICS,
        runtime_lora=True,
        request_fields=SGLANG_FIELDS,
    ),
    # An unknown OpenAI-compatible server: its model list is the only endpoint we can count on.
    "openai": EngineAdapter(kind="openai", health_path="/v1/models", metrics_path=None),
}


def adapter_for(kind: EngineKind) -> EngineAdapter:
    """The adapter for an engine kind."""
    return ADAPTERS[kind]
