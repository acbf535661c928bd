"""SGLang: its request fields and metric names; its tokenizer and run-time LoRA are asked in vLLM's shapes.

Unlike llama.cpp and vLLM, SGLang is not measured on this machine (../shared/ENGINES.md): the `/tokenize` and
`/v1/load_lora_adapter` shapes borrowed from vLLM are the ones to check first when a real SGLang joins the
contract tests. Its token counters are not reconciled (their cached/fresh semantics are unmeasured) and its cache
is not salted (it reads no per-request salt).
"""

from __future__ import annotations

from fleetgate.engines.base import EngineAdapter, MetricNames, max_model_len
from fleetgate.engines.request_fields import OPENAI_FIELDS
from fleetgate.engines.vllm import VllmLora, count_prompt

# OpenAI's fields plus the options of SGLang's srt/entrypoints/openai/protocol.py. Never `lora_path` (the
# catalog chooses adapters) or `rid`.
FIELDS = OPENAI_FIELDS | {
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "continue_final_message",
    "separate_reasoning",
    "stream_reasoning",
    "chat_template_kwargs",
    "regex",
    "ebnf",
}

# Names from SGLang's srt/metrics/collector.py; no prefix query counter, so prompt and cached tokens stand in.
METRICS = MetricNames(
    waiting="sglang:num_queue_reqs",
    running="sglang:num_running_reqs",
    kv_usage="sglang:token_usage",
    prompt_tokens="sglang:prompt_tokens_total",
    generation_tokens="sglang:generation_tokens_total",
    cached_prompt_tokens="sglang:cached_tokens_total",
)


SGLANG = EngineAdapter(
    kind="sglang",
    owned_by="sglang",
    health_path="/health",
    model_context=max_model_len,
    metric_names=METRICS,
    count_prompt=count_prompt,
    lora=VllmLora(),
    request_fields=FIELDS,
)
