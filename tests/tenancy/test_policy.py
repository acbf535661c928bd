"""Per-tenant policy: allowlist, token caps (clamp or reject), input estimate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fleetgate.domain.errors import InvalidRequest, PermissionDenied
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
    assert decision.clamped and decision.max_output_tokens == 100
    assert payload["max_tokens"] == 500  # the policy decides; the engine dialect writes the limit (prepare)


def test_missing_max_tokens_gets_the_cap() -> None:
    decision = apply_policy(_tenant(max_output_tokens=64), {"messages": [{"role": "user", "content": "hi"}]})
    assert decision.max_output_tokens == 64 and decision.reserve_output_tokens == 64


def test_reject_policy() -> None:
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 500}
    with pytest.raises(InvalidRequest, match="`max_completion_tokens` is 500, over this key's limit of 100") as info:
        apply_policy(_tenant(max_output_tokens=100, max_tokens_policy="reject"), payload)
    assert info.value.param == "max_completion_tokens"


def test_bad_max_tokens_is_400() -> None:
    with pytest.raises(InvalidRequest, match="positive integer"):
        apply_policy(_tenant(), {"messages": [], "max_tokens": -3})
    with pytest.raises(InvalidRequest, match="positive integer"):
        apply_policy(_tenant(), {"messages": [], "max_tokens": True})


def test_input_cap() -> None:
    long = {"messages": [{"role": "user", "content": "word " * 400}]}
    assert estimate_input_tokens(long) > 400
    with pytest.raises(InvalidRequest, match="over this key's limit of 100 input tokens"):
        apply_policy(_tenant(max_input_tokens=100), long)
    apply_policy(_tenant(max_input_tokens=1000), long)


def test_estimate_handles_content_parts_and_prompts() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40}]}]}
    assert estimate_input_tokens(parts) == 4 + 10  # message overhead + 40 bytes of text
    assert estimate_input_tokens({"prompt": "y" * 400}) == 100
    assert estimate_input_tokens({"prompt": ["a" * 8, "b" * 8]}) == 4


# Issue 17.5: every engine-native output length is a length; llama-server prefers n_predict to max_tokens.
@pytest.mark.parametrize("field", ["n_predict", "max_completion_tokens", "max_tokens"])
def test_every_length_alias_is_capped(field: str) -> None:
    decision = apply_policy(_tenant(max_output_tokens=3), {"prompt": "hi", field: 10})
    assert decision.max_output_tokens == 3 and decision.clamped
    with pytest.raises(InvalidRequest, match=f"`{field}` is 10, over this key's limit of 3"):
        apply_policy(_tenant(max_output_tokens=3, max_tokens_policy="reject"), {"prompt": "hi", field: 10})


def test_unlimited_n_predict_gets_the_cap_or_the_context() -> None:
    assert apply_policy(_tenant(max_output_tokens=3), {"prompt": "hi", "n_predict": -1}).max_output_tokens == 3
    free = apply_policy(_tenant(), {"prompt": "hi", "n_predict": -1}, context_window=4096)
    assert free.max_output_tokens is None and free.reserve_output_tokens == 4096 - 1


def test_the_largest_alias_is_the_request() -> None:
    decision = apply_policy(_tenant(), {"prompt": "hi", "max_tokens": 5, "n_predict": 500})
    assert decision.max_output_tokens == 500


def test_min_tokens_cannot_exceed_the_output_limit() -> None:
    with pytest.raises(InvalidRequest, match="`min_tokens` is 50, more than the 3"):
        apply_policy(_tenant(max_output_tokens=3), {"prompt": "hi", "min_tokens": 50})


@pytest.mark.parametrize("field", ["top_logprobs", "n_probs", "logprobs"])
def test_logprob_counts_are_capped(field: str) -> None:
    apply_policy(_tenant(), {"prompt": "hi", field: 20})
    with pytest.raises(InvalidRequest, match=f"`{field}` must be an integer from 0 to 20"):
        apply_policy(_tenant(), {"prompt": "hi", field: 10_000})


# Issue 17.6: honest estimates.
def test_token_id_prompts_count_every_id() -> None:
    ids = list(range(5000))
    assert estimate_input_tokens({"prompt": ids}) == 5000
    assert estimate_input_tokens({"prompt": [ids, ids[:10]]}) == 5010
    with pytest.raises(InvalidRequest, match="about 5000 tokens, over this key's limit of 1000"):
        apply_policy(_tenant(max_input_tokens=1000), {"prompt": ids})


def test_images_tools_and_response_formats_count() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]}) >= 1024
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": {"a" * 400: {}}}}}
    bare = estimate_input_tokens({"messages": [{"role": "user", "content": "hi"}]})
    assert (
        estimate_input_tokens({"messages": [{"role": "user", "content": "hi"}], "response_format": schema}) > bare + 100
    )
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 800}}]
    assert estimate_input_tokens({"messages": [{"role": "user", "content": "hi"}], "tools": tools}) > bare + 200


def test_n_and_batched_prompts_multiply_the_output_reservation() -> None:
    decision = apply_policy(_tenant(), {"prompt": ["a", "b", "c"], "max_tokens": 10, "n": 4})
    assert decision.choices == 12 and decision.reserve_output_tokens == 120
    with pytest.raises(InvalidRequest, match="`n` must be an integer from 1 to 16"):
        apply_policy(_tenant(), {"prompt": "hi", "n": 1000})
    with pytest.raises(InvalidRequest, match="asks for 40 completions"):  # the batch multiplies too
        apply_policy(_tenant(), {"prompt": ["a"] * 10, "n": 4})


def test_unset_max_tokens_reserves_the_real_worst_case() -> None:
    payload = {"messages": [{"role": "user", "content": "x" * 400}]}
    prompt = estimate_input_tokens(payload)
    assert apply_policy(_tenant(), payload, context_window=8192).reserve_output_tokens == 8192 - prompt
    assert apply_policy(_tenant(max_output_tokens=50), payload, context_window=8192).reserve_output_tokens == 50
    with pytest.raises(InvalidRequest, match="exceeds the model's context window of 200"):
        apply_policy(_tenant(), {**payload, "max_tokens": 150}, context_window=200)
