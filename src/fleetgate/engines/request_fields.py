"""Which request fields an engine gets from a tenant: an allowlist per dialect, everything else dropped.

An engine reads far more than OpenAI's fields, and several of them are controls no tenant may hold: llama-server's
`n_predict` (an output length it prefers over `max_tokens`), `id_slot`, `lora`, `cache_prompt`, `n_keep`,
`response_fields`; vLLM's `priority` (its own scheduling order), `kv_transfer_params`, `vllm_xargs`,
`prompt_logprobs`, `use_beam_search`; SGLang's `lora_path` and `rid`. A denylist breaks the day an engine adds one
more, so each dialect lists what passes: OpenAI's fields (here) plus the engine's documented sampling and
formatting options (in its own file). Output lengths are never passed as sent: the policy decided one limit
(tenancy/policy.py) and `prepare` writes it as `max_tokens`.
"""

from __future__ import annotations

from typing import Any

OPENAI_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "suffix",
        "echo",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "n",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
        "response_format",
        "reasoning_effort",
    }
)
# Output lengths every engine reads (llama.cpp's n_predict, with the other two as its aliases): never passed as sent.
LENGTH_ALIASES = frozenset({"max_tokens", "max_completion_tokens", "n_predict"})
# OpenAI's one option inside `stream_options` (the gateway always forces usage on); a dialect may allow more.
STREAM_OPTIONS = frozenset({"include_usage"})


def allowed_body(
    payload: dict[str, Any],
    allowed: frozenset[str],
    stream_options: frozenset[str],
    max_output_tokens: int | None,
    accepted: frozenset[str] | None = None,
) -> dict[str, Any]:
    """A new body of only the allowed fields, with the decided output limit as the one length field (`accepted`:
    `allowed` with the length fields, precomputed by the caller)."""
    # The usual body has only allowed fields and length fields: one set comparison in C, not a test per field.
    if payload.keys() <= (accepted if accepted is not None else allowed | LENGTH_ALIASES):
        body = payload.copy()
        for name in LENGTH_ALIASES:
            body.pop(name, None)
    else:
        body = {k: v for k, v in payload.items() if k in allowed}
    options = body.get("stream_options")
    if isinstance(options, dict) and not options.keys() <= stream_options:
        body["stream_options"] = {k: v for k, v in options.items() if k in stream_options}
    if max_output_tokens is not None:
        body["max_tokens"] = max_output_tokens
    return body
