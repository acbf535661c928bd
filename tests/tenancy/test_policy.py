"""Per-tenant policy: allowlist, token caps (clamp or reject), input estimate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fleetgate.errors import InvalidRequest, PermissionDenied
from fleetgate.tenancy.models import Tenant
from fleetgate.tenancy.policy import apply_policy, check_model, estimate_input_tokens


def _tenant(**overrides: Any) -> Tenant:
    base: dict[str, Any] = {
        "id": "t1",
        "external_id": "acme",
        "name": "Acme",
        "status": "active",
        "priority": "standard",
        "weight": 1,
        "rpm": None,
        "tpm": None,
        "max_concurrency": None,
        "budget_micros": None,
        "max_input_tokens": None,
        "max_output_tokens": None,
        "max_tokens_policy": "clamp",
        "models": ["*"],
        "adapters": [],
        "managed_by": "operator",
        "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC),
    }
    return Tenant.model_validate({**base, **overrides})


def test_allowlist() -> None:
    check_model(_tenant(), "anything")
    check_model(_tenant(models=["smollm2"]), "smollm2")
    with pytest.raises(PermissionDenied, match="model `llama` is not allowed for tenant 'acme'"):
        check_model(_tenant(models=["smollm2"]), "llama")
    with pytest.raises(PermissionDenied):
        check_model(_tenant(models=[]), "smollm2")


def test_clamp_max_tokens() -> None:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
    decision = apply_policy(_tenant(max_output_tokens=100), payload)
    assert payload["max_tokens"] == 100 and decision.clamped and decision.max_output_tokens == 100


def test_missing_max_tokens_gets_the_cap() -> None:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    apply_policy(_tenant(max_output_tokens=64), payload)
    assert payload["max_tokens"] == 64


def test_reject_policy() -> None:
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 500}
    with pytest.raises(InvalidRequest, match="`max_completion_tokens` is 500, over this key's limit of 100") as info:
        apply_policy(_tenant(max_output_tokens=100, max_tokens_policy="reject"), payload)
    assert info.value.param == "max_completion_tokens"


def test_bad_max_tokens_is_400() -> None:
    with pytest.raises(InvalidRequest, match="positive integer"):
        apply_policy(_tenant(), {"messages": [], "max_tokens": -3})


def test_input_cap() -> None:
    long = {"messages": [{"role": "user", "content": "word " * 400}]}
    assert estimate_input_tokens(long) > 400
    with pytest.raises(InvalidRequest, match="over this key's limit of 100 input tokens"):
        apply_policy(_tenant(max_input_tokens=100), long)
    apply_policy(_tenant(max_input_tokens=1000), long)


def test_estimate_handles_content_parts_and_prompts() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]}
    assert estimate_input_tokens(parts) == (40 + 4 + 3) // 4
    assert estimate_input_tokens({"prompt": "y" * 400}) == 100
    assert estimate_input_tokens({"prompt": ["a" * 8, "b" * 8]}) == 4
