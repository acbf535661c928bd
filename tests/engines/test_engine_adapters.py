"""What each engine kind's request body gets from the gateway (EngineAdapter.prepare): allowed fields only."""

from __future__ import annotations

from fleetgate.engines.registry import adapter_for


def test_llamacpp_never_gets_slot_adapter_or_cache_controls() -> None:
    """A client-chosen `id_slot` would queue behind or displace other tenants and switch off the cache search;
    `lora` would apply an adapter the catalog never granted; `n_keep`, `response_fields` and friends are controls."""
    body = {
        "model": "m",
        "messages": [],
        "id_slot": 1,
        "cache_prompt": False,
        "lora": [{"id": 0, "scale": 1.0}],
        "n_keep": -1,
        "response_fields": ["content"],
        "timings_per_token": True,
        "top_k": 5,
    }
    sent = adapter_for("llamacpp").prepare(body, "tenant-a")
    assert sent == {"model": "m", "messages": [], "top_k": 5}
    assert body["id_slot"] == 1  # the parsed request itself is left alone (metering and the I/O log read it)


def test_every_length_alias_is_replaced_by_the_decided_limit() -> None:
    # Issue 17.5: llama-server prefers n_predict over max_tokens; only the policy's limit may reach any engine.
    body = {"model": "m", "prompt": "hi", "n_predict": -1, "max_completion_tokens": 50, "max_tokens": 10}
    for kind in ("llamacpp", "vllm", "sglang", "openai"):
        sent = adapter_for(kind).prepare(body, "t", 3)  # type: ignore[arg-type]
        assert sent["max_tokens"] == 3 and "n_predict" not in sent and "max_completion_tokens" not in sent, kind
        assert "max_tokens" not in adapter_for(kind).prepare(body, "t", None)  # type: ignore[arg-type]


def test_vllm_gets_the_tenant_salt_and_loses_its_scheduling_controls() -> None:
    body = {"model": "m", "prompt": "hi", "id_slot": 1, "priority": -100, "kv_transfer_params": {}, "min_p": 0.1}
    sent = adapter_for("vllm").prepare(body, "tenant-a")
    assert sent == {"model": "m", "prompt": "hi", "min_p": 0.1, "cache_salt": "fg:tenant-a"}
    assert adapter_for("vllm").prepare({**body, "cache_salt": "mine"}, "tenant-a")["cache_salt"] == "fg:tenant-a:mine"


def test_stream_options_keep_only_what_the_engine_reads() -> None:
    body = {"model": "m", "prompt": "hi", "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    assert adapter_for("llamacpp").prepare(body, "t")["stream_options"] == {"include_usage": True}
    assert adapter_for("vllm").prepare(body, "t")["stream_options"] == body["stream_options"]


def test_unknown_engines_get_openai_fields_only() -> None:
    body = {"model": "m", "prompt": "hi", "id_slot": 0, "temperature": 0.2}
    assert adapter_for("openai").prepare(body, "t") == {"model": "m", "prompt": "hi", "temperature": 0.2}
