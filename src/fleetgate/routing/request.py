"""Turn an OpenAI request body into a RouteRequest: the prompt rendered as text, the session key, a token guess."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetgate.routing.router import RouteRequest

SESSION_HEADER = "x-session-id"
_CHARS_PER_TOKEN = 4  # the usual English average; the engine's count settles billing, this only weighs load


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts say anything about the prefix
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def render_messages(messages: Sequence[Any]) -> str:
    """Role and content of each message, in order.

    Prefix-stable by construction: the rendering of a conversation is a prefix of the rendering of the same
    conversation with more turns, which is what lets one turn's blocks match the next turn's.
    """
    parts: list[str] = []
    for message in messages:
        if isinstance(message, Mapping):
            parts.append(f"<{message.get('role', '')}>{_content_text(message.get('content'))}\n")
    return "".join(parts)


def render_prompt(payload: Mapping[str, Any]) -> str | None:
    """The text the prefix index hashes: chat messages, else a completion prompt (token arrays: None)."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        return render_messages(messages)
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return None


def route_request_from(
    payload: Mapping[str, Any],
    tenant_id: str,
    session_header: str | None = None,
    *,
    adapter: str | None = None,
    est_tokens: int | None = None,
    model: str | None = None,
) -> RouteRequest:
    """Build the RouteRequest for a parsed `/v1/chat/completions` or `/v1/completions` body.

    The session key is the `x-session-id` header when present, else the body's `user` field. `est_tokens`
    defaults to the rendered text's length / 4; pass the admission estimate when there is one. `model` is the base
    model the replicas serve when the body names an adapter.
    """
    text = render_prompt(payload)
    user = payload.get("user")
    session = session_header or (user if isinstance(user, str) and user else None)
    if est_tokens is None:
        est_tokens = len(text) // _CHARS_PER_TOKEN if text else 0
    return RouteRequest(
        model=model or str(payload.get("model", "")),
        # An adapter's KV blocks are its own (vLLM hashes the adapter into each block): a separate namespace.
        tenant=f"{tenant_id}/{adapter}" if adapter else tenant_id,
        session=session,
        prompt_text=text,
        adapter=adapter,
        est_tokens=est_tokens,
    )
