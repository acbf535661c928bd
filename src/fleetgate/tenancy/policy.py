"""A tenant's policy applied to one request: model allowlist, token caps, and the reservation estimate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetgate.errors import InvalidRequest, PermissionDenied
from fleetgate.tenancy.models import Tenant

# When a request sets no max_tokens and the tenant has no cap, reserve this many output tokens up front;
# settling corrects it to the real number.
DEFAULT_OUTPUT_RESERVATION = 256
_PER_MESSAGE_OVERHEAD = 4


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What the policy let through: the input estimate and output budget used for limits."""

    est_input_tokens: int
    max_output_tokens: int | None
    clamped: bool


def estimate_input_tokens(payload: dict[str, Any]) -> int:
    """A cheap upper-ish estimate (UTF-8 bytes / 4 plus per-message overhead); the engine stays the authority."""
    total = 0
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += _PER_MESSAGE_OVERHEAD
            if isinstance(message, dict):
                total += _text_bytes(message.get("content"))
    else:
        total += _text_bytes(payload.get("prompt"))
    return max(1, (total + 3) // 4)


def _text_bytes(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):
        return sum(_text_bytes(part.get("text")) if isinstance(part, dict) else _text_bytes(part) for part in content)
    return 0


def _requested_max_tokens(payload: dict[str, Any]) -> tuple[str | None, int | None]:
    for field in ("max_completion_tokens", "max_tokens"):
        value = payload.get(field)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"`{field}` must be a positive integer", param=field)
            return field, value
    return None, None


def check_model(tenant: Tenant, model: str) -> None:
    """403 for a model this tenant may not use (the caller answers 404 for one nobody serves)."""
    if not tenant.allows_model(model):
        raise PermissionDenied(f"model `{model}` is not allowed for tenant {tenant.external_id!r}", param="model")


def apply_policy(tenant: Tenant, payload: dict[str, Any]) -> PolicyDecision:
    """Enforce token caps (clamping `max_tokens` in place when the policy says so) and estimate the input."""
    est_input = estimate_input_tokens(payload)
    if tenant.max_input_tokens is not None and est_input > tenant.max_input_tokens:
        raise InvalidRequest(
            f"the prompt is about {est_input} tokens, over this key's limit of {tenant.max_input_tokens} input"
            " tokens: shorten it",
            param="messages" if "messages" in payload else "prompt",
        )
    field, requested = _requested_max_tokens(payload)
    cap = tenant.max_output_tokens
    clamped = False
    if cap is not None:
        if requested is None:
            payload["max_tokens"] = cap  # an unbounded generation would blow through the cap
            requested, clamped = cap, True
        elif requested > cap:
            if tenant.max_tokens_policy == "reject":
                raise InvalidRequest(
                    f"`{field}` is {requested}, over this key's limit of {cap}: ask for at most {cap}", param=field
                )
            payload[field or "max_tokens"] = cap
            requested, clamped = cap, True
    return PolicyDecision(est_input_tokens=est_input, max_output_tokens=requested, clamped=clamped)
