"""vLLM's OpenAI wire shapes (from vllm/entrypoints/openai/*/protocol.py and serving.py), as plain dicts."""

from __future__ import annotations

import time
import uuid
from typing import Any


class SimApiError(Exception):
    """An error answered as vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, err_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_type = err_type
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON body vLLM sends."""
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}}


def model_not_found(model: object) -> SimApiError:
    """vLLM's _check_model answer for an unknown model or an adapter that is not loaded."""
    return SimApiError(404, "NotFoundError", f"The model `{model}` does not exist.", param="model")


def random_id() -> str:
    """vLLM's random_uuid(): 32 hex digits."""
    return uuid.uuid4().hex


def usage(prompt: int, completion: int, cached: int, *, details: bool, stream: bool) -> dict[str, Any]:
    """UsageInfo; vLLM sets prompt_tokens_details only when enabled and cached_tokens is non-zero."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if details and cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    elif not stream:
        # non-stream responses are dumped whole (None included); the stream's usage chunk drops None fields
        out["prompt_tokens_details"] = None
    return out


def chat_response(
    rid: str, model: str, text: str, finish: str, use: dict[str, Any], created: int | None = None
) -> dict[str, Any]:
    """ChatCompletionResponse."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning": None,
        "reasoning_content": None,
    }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish, "stop_reason": None}],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": use,
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def chat_chunk(
    rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None, use: dict[str, Any] | None
) -> dict[str, Any]:
    """ChatCompletionStreamResponse, dumped with exclude_unset (no usage key unless set)."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if use is not None:
        chunk["usage"] = use
    return chunk


def completion_response(
    rid: str, model: str, text: str, finish: str, use: dict[str, Any], created: int | None = None
) -> dict[str, Any]:
    """CompletionResponse."""
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": None,
        "prompt_logprobs": None,
    }
    return {
        "id": rid,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [choice],
        "service_tier": None,
        "system_fingerprint": None,
        "usage": use,
        "kv_transfer_params": None,
    }


def completion_chunk(
    rid: str, model: str, created: int, text: str, finish: str | None, use: dict[str, Any] | None
) -> dict[str, Any]:
    """CompletionStreamResponse; vLLM dumps these with exclude_unset=False, so usage is null until the end."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": use,
    }


def usage_chunk(rid: str, model: str, created: int, obj: str, use: dict[str, Any]) -> dict[str, Any]:
    """The final stream chunk with `choices: []` and usage (stream_options.include_usage)."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}


def model_card(model_id: str, *, root: str, parent: str | None, max_model_len: int | None) -> dict[str, Any]:
    """ModelCard with one ModelPermission, as /v1/models lists them."""
    now = int(time.time())
    permission = {
        "id": f"modelperm-{random_id()}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": model_id,
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
