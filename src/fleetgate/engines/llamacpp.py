"""llama.cpp's `llama-server`: its request fields, metrics, slots, tokenizer, token counters and running counts.

Measured behaviour is in ../shared/ENGINES.md. Adapters are fixed at start (`--lora`), so there are no LoRA
endpoints; `cache_salt` is ignored by the engine, so there is no per-tenant cache isolation to ask for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetgate.engines.base import EngineAdapter, JsonPost, MetricNames, RunningCounts, SlotsSource
from fleetgate.engines.counters import PROCESS_START, EngineCounters, counter_sums, need, started_at
from fleetgate.engines.request_fields import OPENAI_FIELDS

# OpenAI's fields plus the sampling and formatting options of tools/server/server-schema.cpp (the build we ship).
# Never `id_slot`, `lora`, `cache_prompt`, `n_keep`, `response_fields`, `n_predict`: controls no tenant may hold.
FIELDS = OPENAI_FIELDS | {
    "top_k",
    "min_p",
    "typical_p",
    "top_n_sigma",
    "repeat_penalty",
    "repeat_last_n",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_penalty_last_n",
    "dry_sequence_breakers",
    "xtc_probability",
    "xtc_threshold",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "dynatemp_range",
    "dynatemp_exponent",
    "min_keep",
    "samplers",
    "grammar",
    "json_schema",
    "ignore_eos",
    "n_probs",
    "post_sampling_probs",
    "chat_template_kwargs",
    "reasoning_format",
}

# Names as llama-server 11434 prints them (no labels; `--metrics` turns them on).
PROMPT_TOKENS = "llamacpp:prompt_tokens_total"  # EXCLUDES cached tokens
CACHED_TOKENS = "llamacpp:prompt_tokens_cached_total"
PREDICTED_TOKENS = "llamacpp:tokens_predicted_total"
METRICS = MetricNames(
    waiting="llamacpp:requests_deferred",
    running="llamacpp:requests_processing",
    prompt_tokens=PROMPT_TOKENS,
    generation_tokens=PREDICTED_TOKENS,
    cached_prompt_tokens=CACHED_TOKENS,
    prompt_excludes_cached=True,
)
_COUNTERS = frozenset({PROMPT_TOKENS, CACHED_TOKENS, PREDICTED_TOKENS, PROCESS_START})
_NO_METRICS = " (start llama-server with --metrics)"

# Where llama-server puts its running token counts on each streamed chunk (with `timings_per_token`).
RUNNING_COUNTS_MARKER = b'"timings"'


def read_counters(text: str) -> EngineCounters:
    """The counters: `prompt_tokens_total` EXCLUDES cached tokens (so it is the fresh part), cached tokens are
    counted apart, `tokens_predicted_total` is output; cancelled requests' tokens are counted too. llama-server
    does not say when it started: reconcile needs `--since`."""
    sums = counter_sums(text, _COUNTERS)
    fresh = need(sums, PROMPT_TOKENS, _NO_METRICS)
    cached = sums.get(CACHED_TOKENS)
    completion = need(sums, PREDICTED_TOKENS, _NO_METRICS)
    return EngineCounters(fresh, None if cached is None else fresh + round(cached), completion, started_at(sums))


async def count_prompt(payload: dict[str, Any], post: JsonPost) -> int | None:
    """llama-server renders the chat template itself (`/apply-template`); its `/tokenize` then counts what the
    completion will see."""
    if "messages" in payload:
        rendered = await post("/apply-template", {"messages": payload["messages"]})
        if not isinstance(rendered, dict) or not isinstance(rendered.get("prompt"), str):
            return None
        content: str = rendered["prompt"]
    else:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str):
            return None
        content = prompt
    result = await post("/tokenize", {"content": content})
    tokens = result.get("tokens") if isinstance(result, dict) else None
    return len(tokens) if isinstance(tokens, list) else None


def running_usage(chunks: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The running counts of the latest chunk (first given) that has `timings`, as an OpenAI usage block: read
    once, when a stream ended without its usage block."""
    for chunk in chunks:
        timings = chunk.get("timings") if chunk is not None else None
        if isinstance(timings, dict):
            return _usage_of_timings(timings)
    return None


def _usage_of_timings(timings: dict[str, Any]) -> dict[str, Any] | None:
    # `prompt_n` are the tokens it computed, `cache_n` those it reused, `predicted_n` its output so far.
    values: list[Any] = [timings.get(k) for k in ("prompt_n", "cache_n", "predicted_n")]
    if not all(_count(v) for v in values):
        return None
    computed, cached, predicted = values
    return {
        "prompt_tokens": computed + cached,
        "completion_tokens": predicted,
        "total_tokens": computed + cached + predicted,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _total_slots(props: Any) -> int | None:
    slots = props.get("total_slots") if isinstance(props, dict) else None
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 else None


def _context(item: dict[str, Any]) -> Any:
    # `/v1/models` reports the per-slot context (`-c` is shared by the slots) as `meta.n_ctx`.
    meta = item.get("meta")
    return meta.get("n_ctx") if isinstance(meta, dict) else None


LLAMACPP = EngineAdapter(
    kind="llamacpp",
    owned_by="llamacpp",
    health_path="/health",  # 503 while loading, 200 when ready
    model_context=_context,
    metric_names=METRICS,
    # llama.cpp has no KV gauge: busy and deferred requests against `GET /props` `total_slots` are its pressure.
    slots=SlotsSource("/props", _total_slots),
    count_prompt=count_prompt,
    read_counters=read_counters,
    request_fields=FIELDS,
    # Its running token counts on every chunk, so a stream cut before the usage block (the client left) still
    # bills exactly what the engine computed and cached (`running_usage`).
    stream_fields=(("timings_per_token", True),),
    running_counts=RunningCounts(RUNNING_COUNTS_MARKER, running_usage),
)
