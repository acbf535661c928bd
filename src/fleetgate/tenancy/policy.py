"""A tenant's policy applied to one request: model allowlist, input and output caps, and the worst case it may cost.

Every field an engine reads as an output length counts, not only OpenAI's: llama-server prefers `n_predict` to
`max_tokens`, so a cap checked on `max_tokens` alone was a cap on nothing. The policy reads every length alias,
decides one limit, and the engine dialect (engines/request_fields.py) removes the aliases and writes that limit
as the only one the engine sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetgate.domain.errors import InvalidRequest, PermissionDenied
from fleetgate.tenancy.estimate import estimate_input_tokens, estimate_prompt
from fleetgate.tenancy.models import Tenant

__all__ = ["LENGTH_FIELDS", "PolicyDecision", "apply_policy", "check_model", "estimate_input_tokens"]

# Output-length fields any supported engine reads (OpenAI, vLLM, SGLang: max_tokens / max_completion_tokens;
# llama.cpp: n_predict, with the other two as its aliases).
LENGTH_FIELDS = ("max_completion_tokens", "max_tokens", "n_predict")
# When neither the tenant, the client nor the engine's context bounds the output, reserve this many tokens per
# completion (the engine's real count settles the reservation).
UNBOUNDED_OUTPUT_RESERVATION = 4096
MAX_LOGPROBS = 20  # OpenAI's top_logprobs ceiling; engines compute and send this many alternatives per token


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What the policy let through, and the worst case the limits reserve for it."""

    est_input_tokens: int
    # The output limit per completion the engine gets (None: none is sent; the engine stops at its context).
    max_output_tokens: int | None
    # The most output the request can produce (every completion of every prompt), for limits and admission.
    reserve_output_tokens: int
    choices: int  # completions the engine generates: n x prompts
    clamped: bool

    @property
    def reserve_tokens(self) -> int:
        """Prompt estimate plus worst-case output: what rate limits and the budget reserve."""
        return self.est_input_tokens + self.reserve_output_tokens


def check_model(tenant: Tenant, model: str) -> None:
    """403 for a model this tenant may not use (the caller answers 404 for one nobody serves)."""
    if not tenant.allows_model(model):
        raise PermissionDenied(f"model `{model}` is not allowed for tenant {tenant.external_id!r}", param="model")


def apply_policy(
    tenant: Tenant, payload: dict[str, Any], context_window: int | None = None, max_choices: int = 16
) -> PolicyDecision:
    """Enforce the tenant's caps and the request's own bounds; estimate the worst case. Never edits `payload`."""
    prompt = estimate_prompt(payload)
    _check_input(tenant, payload, prompt.tokens)
    choices = _choices(payload, max_choices) * prompt.prompts
    if choices > max_choices:  # each prompt of a batch is a sequence of its own on the engine
        raise InvalidRequest(
            f"this request asks for {choices} completions (`n` x {prompt.prompts} prompts); at most {max_choices}"
            " per request: split the batch",
            param="prompt",
        )
    field, requested = _requested_length(payload)
    limit, clamped = _output_limit(tenant, field, requested)
    room = _context_room(context_window, prompt.tokens, limit, field)
    _check_min_tokens(payload, limit if limit is not None else room)
    _check_logprobs(payload)
    per_choice = limit if limit is not None else room if room is not None else UNBOUNDED_OUTPUT_RESERVATION
    return PolicyDecision(prompt.tokens, limit, per_choice * choices, choices, clamped)


def _check_input(tenant: Tenant, payload: dict[str, Any], est_input: int) -> None:
    if tenant.max_input_tokens is not None and est_input > tenant.max_input_tokens:
        raise InvalidRequest(
            f"the prompt is about {est_input} tokens, over this key's limit of {tenant.max_input_tokens} input"
            " tokens: shorten it",
            param="messages" if "messages" in payload else "prompt",
        )


def _requested_length(payload: dict[str, Any]) -> tuple[str | None, int | None]:
    """The largest output length any alias asks for (the engine might honour any of them), and its field."""
    field: str | None = None
    largest: int | None = None
    for name in LENGTH_FIELDS:
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(f"`{name}` must be a positive integer", param=name)
        if name == "n_predict" and value in (-1, -2):
            value = None  # llama.cpp: "until the end of the context", the same as sending none
        elif value < 1:
            hint = " (or -1 for no limit)" if name == "n_predict" else ""
            raise InvalidRequest(f"`{name}` must be a positive integer{hint}", param=name)
        if value is not None and (largest is None or value > largest):
            field, largest = name, value
        elif field is None:
            field = name
    return field, largest


def _output_limit(tenant: Tenant, field: str | None, requested: int | None) -> tuple[int | None, bool]:
    cap = tenant.max_output_tokens
    if cap is None or (requested is not None and requested <= cap):
        return requested, False
    if requested is not None and tenant.max_tokens_policy == "reject":
        raise InvalidRequest(
            f"`{field}` is {requested}, over this key's limit of {cap}: ask for at most {cap}", param=field
        )
    return cap, True  # an unbounded generation would blow through the cap, so the cap is sent either way


def _context_room(context: int | None, est_input: int, limit: int | None, field: str | None) -> int | None:
    """Output tokens left in the engine's context after the prompt; 400 when the request cannot fit."""
    if context is None:
        return None
    if limit is not None and est_input + limit > context:
        raise InvalidRequest(
            f"the prompt (about {est_input} tokens) plus {field or 'max_tokens'} ({limit}) exceeds the model's"
            f" context window of {context} tokens: shorten the prompt or lower {field or 'max_tokens'}",
            param=field or "max_tokens",
        )
    if est_input >= context:
        raise InvalidRequest(
            f"the prompt (about {est_input} tokens) does not fit the model's context window of {context} tokens:"
            " shorten it",
            param="messages",
        )
    return context - est_input


def _choices(payload: dict[str, Any], max_choices: int) -> int:
    value = payload.get("n", 1)
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= max_choices:
        raise InvalidRequest(f"`n` must be an integer from 1 to {max_choices}", param="n")
    return value


def _check_min_tokens(payload: dict[str, Any], most: int | None) -> None:
    # vLLM and SGLang generate at least `min_tokens`, ignoring end-of-sequence: it is an output length too.
    value = payload.get("min_tokens")
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest("`min_tokens` must be a non-negative integer", param="min_tokens")
    if most is not None and value > most:
        raise InvalidRequest(f"`min_tokens` is {value}, more than the {most} output tokens allowed", param="min_tokens")


def _check_logprobs(payload: dict[str, Any]) -> None:
    # Alternatives per generated token: each one is computed and sent, so the count is capped as OpenAI does.
    for name in ("top_logprobs", "n_probs", "logprobs"):
        value = payload.get(name)
        if value is None or isinstance(value, bool):
            continue  # chat's `logprobs` is a boolean
        if not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS:
            raise InvalidRequest(f"`{name}` must be an integer from 0 to {MAX_LOGPROBS}", param=name)
