"""The request body: parsed once, checked for the shapes the gateway itself relies on, refused with what to fix."""

from __future__ import annotations

from typing import Any

import orjson

from fleetgate.domain.errors import InvalidRequest
from fleetgate.serving.outcome import Endpoint

# orjson reads JSON nested up to 1,024 levels but writes at most 254, so a deeper body parsed fine and then failed
# when the gateway serialised it for the engine. No OpenAI request needs more than a few dozen levels (a JSON
# schema in `response_format` or `tools` is the deepest); this leaves room for deep schemas.
MAX_NESTING = 128
MAX_MODEL_NAME = 256


def parse_request(body: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """Parse and check an OpenAI request body; raise InvalidRequest (400) saying what to fix."""
    if not body:
        raise InvalidRequest("request body is empty: send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    if body.count(b"[") + body.count(b"{") > MAX_NESTING:  # fewer brackets cannot nest deeper: no walk needed
        _check_nesting(payload)
    _check_model(payload.get("model"))
    if endpoint == "chat":
        _check_messages(payload.get("messages"))
    else:
        _check_prompt(payload)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    return payload


def _check_nesting(payload: dict[str, Any]) -> None:
    """400 for JSON nested deeper than MAX_NESTING levels (iterative: no recursion limit to hit)."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise InvalidRequest(f"request body is nested more than {MAX_NESTING} levels deep: flatten it")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _check_model(model: Any) -> None:
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string", param="model")
    if len(model) > MAX_MODEL_NAME:
        raise InvalidRequest(f"`model` is longer than {MAX_MODEL_NAME} characters", param="model")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` is required and must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"`messages[{index}]` must be an object with `role` and `content`", param="messages")
        if not isinstance(message.get("role"), str):
            raise InvalidRequest(f"`messages[{index}].role` must be a string", param="messages")


def _check_prompt(payload: dict[str, Any]) -> None:
    if "prompt" not in payload:
        raise InvalidRequest("`prompt` is required", param="prompt")
    prompt = payload["prompt"]
    if isinstance(prompt, str) or _is_token_ids(prompt):
        return
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_token_ids(p) for p in prompt):
        return
    raise InvalidRequest(
        "`prompt` must be a string, an array of strings, an array of token ids, or an array of token-id arrays",
        param="prompt",
    )


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in value)
    )
