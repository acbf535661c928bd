"""What a request may cost before any engine saw it: the prompt estimate and the number of completions.

The engine stays the authority on tokens (metering bills its own `usage`); these numbers only size reservations,
caps and admission. They must not be cheap to fool: every form a prompt can take counts (text, content parts,
token ids, batched prompts, tools, response formats), and so does everything that multiplies the output (`n`,
several prompts in one completions request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_BYTES_PER_TOKEN = 4  # UTF-8 bytes per token for English text; the engine's own count settles the difference
_PER_MESSAGE_OVERHEAD = 4  # role markers and separators the chat template adds around each message
# Media parts: the engine's count depends on the model (an image is 85-1,500 tokens on common vision models);
# these are the sizes reserved for one part before the engine reports the real number.
IMAGE_PART_TOKENS = 1024
AUDIO_PART_TOKENS = 1024
_MEDIA_PARTS = {"image_url": IMAGE_PART_TOKENS, "input_image": IMAGE_PART_TOKENS, "input_audio": AUDIO_PART_TOKENS}


@dataclass(frozen=True, slots=True)
class PromptEstimate:
    """Estimated prompt tokens (all prompts of the request) and how many completions it asks for."""

    tokens: int
    prompts: int  # a completions request may batch several prompts; chat has one


def estimate_prompt(payload: dict[str, Any]) -> PromptEstimate:
    """Estimate every prompt form of a chat or completions body (never less than 1 token)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        tokens = sum(_message_tokens(m) for m in messages)
        prompts = 1
    else:
        tokens, prompts = _prompt_tokens(payload.get("prompt"))
        tokens += _text_tokens(payload.get("suffix"))
    for field in ("tools", "functions", "response_format"):
        tokens += _json_tokens(payload.get(field))
    return PromptEstimate(max(1, tokens), max(1, prompts))


def estimate_input_tokens(payload: dict[str, Any]) -> int:
    """The prompt estimate alone (benchmarks and tests use it)."""
    return estimate_prompt(payload).tokens


def _message_tokens(message: Any) -> int:
    if not isinstance(message, dict):
        return _PER_MESSAGE_OVERHEAD + _json_tokens(message)
    tokens = _PER_MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
    for field in ("name", "tool_call_id", "reasoning_content"):
        tokens += _text_tokens(message.get(field))
    for field in ("tool_calls", "function_call"):
        tokens += _json_tokens(message.get(field))
    return tokens


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return _json_tokens(content)
    total = 0
    for part in content:
        if isinstance(part, str):
            total += _text_tokens(part)
        elif isinstance(part, dict):
            media = _MEDIA_PARTS.get(str(part.get("type")))
            total += media if media is not None else _part_tokens(part)
        else:
            total += _json_tokens(part)
    return total


def _part_tokens(part: dict[str, Any]) -> int:
    text = part.get("text")
    if isinstance(text, str):
        return _text_tokens(text)
    return _json_tokens(part)  # an unknown part type still costs what it carries


def _prompt_tokens(prompt: Any) -> tuple[int, int]:
    """(tokens, prompts) of a completions `prompt`: text, token ids, or a batch of either."""
    if isinstance(prompt, str):
        return _text_tokens(prompt), 1
    if not isinstance(prompt, list) or not prompt:
        return _json_tokens(prompt), 1
    if all(isinstance(item, int) for item in prompt):
        return len(prompt), 1  # one prompt of token ids: one token each
    tokens = 0
    for item in prompt:
        if isinstance(item, str):
            tokens += _text_tokens(item)
        elif isinstance(item, list):
            tokens += len(item)  # token ids
        else:
            tokens += _json_tokens(item)
    return tokens, len(prompt)


def _text_tokens(text: Any) -> int:
    if not isinstance(text, str) or not text:
        return 0
    return (len(text.encode()) + _BYTES_PER_TOKEN - 1) // _BYTES_PER_TOKEN


def _json_tokens(value: Any) -> int:
    if value is None:
        return 0
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return 0  # the body was parsed from JSON, so this only guards against shapes orjson will not write back
    return (size + _BYTES_PER_TOKEN - 1) // _BYTES_PER_TOKEN
