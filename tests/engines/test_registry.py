"""The registry: every engine kind has its dialect, recognised by its signature; shared rules hold for all."""

from __future__ import annotations

from typing import get_args

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.engines.registry import ADAPTERS, adapter_for, detect_kind, reconcilable, reconcilable_kinds

VLLM_LISTING = {
    "object": "list",
    "data": [
        {"id": "smollm2", "object": "model", "owned_by": "vllm", "parent": None, "max_model_len": 2048},
        {"id": "sql-lora", "object": "model", "owned_by": "vllm", "parent": "smollm2", "max_model_len": 2048},
    ],
}


def test_every_kind_has_its_dialect() -> None:
    kinds: tuple[EngineKind, ...] = get_args(EngineKind)
    assert set(ADAPTERS) == set(kinds)
    assert all(adapter_for(kind).kind == kind for kind in kinds)


def test_kind_comes_from_owned_by() -> None:
    assert detect_kind(VLLM_LISTING) == "vllm"
    assert detect_kind({"data": [{"id": "m", "owned_by": "llamacpp"}]}) == "llamacpp"
    assert detect_kind({"data": [{"id": "m", "owned_by": "SGLang"}]}) == "sglang"
    assert detect_kind({"data": [{"id": "m", "owned_by": "acme"}]}) is None
    assert detect_kind({"data": [{"id": "m"}, "x"]}) is None
    assert detect_kind(["not", "a", "listing"]) is None


def test_only_engines_with_readable_counters_are_reconciled() -> None:
    assert reconcilable_kinds() == ("llamacpp", "vllm")
    assert reconcilable("vllm") is adapter_for("vllm")
    assert reconcilable("openai") is None and reconcilable("sglang") is None and reconcilable("tgi") is None


def test_every_length_alias_is_replaced_by_the_decided_limit() -> None:
    # Issue 17.5: llama-server prefers n_predict over max_tokens; only the policy's limit may reach any engine.
    body = {"model": "m", "prompt": "hi", "n_predict": -1, "max_completion_tokens": 50, "max_tokens": 10}
    for adapter in ADAPTERS.values():
        sent = adapter.prepare(body, "t", 3)
        assert sent["max_tokens"] == 3 and "n_predict" not in sent and "max_completion_tokens" not in sent
        assert "max_tokens" not in adapter.prepare(body, "t", None)
