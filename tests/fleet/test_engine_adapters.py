"""What each engine kind's request body gets from the gateway (EngineAdapter.prepare)."""

from __future__ import annotations

from fleetgate.fleet.engines.registry import adapter_for


def test_llamacpp_never_gets_a_client_slot_pin() -> None:
    """A client-chosen `id_slot` would queue behind or displace other tenants and switch off the cache search."""
    body = {"model": "m", "messages": [], "id_slot": 1, "cache_prompt": True}
    sent = adapter_for("llamacpp").prepare(body, "tenant-a")
    assert "id_slot" not in sent and sent["cache_prompt"] is True
    assert body["id_slot"] == 1  # the parsed request itself is left alone (metering and the I/O log read it)


def test_vllm_gets_the_tenant_salt_and_keeps_other_fields() -> None:
    body = {"model": "m", "prompt": "hi", "id_slot": 1}
    sent = adapter_for("vllm").prepare(body, "tenant-a")
    assert sent["cache_salt"] == "fg:tenant-a" and sent["id_slot"] == 1  # only llama.cpp reads id_slot
    assert adapter_for("vllm").prepare({**body, "cache_salt": "mine"}, "tenant-a")["cache_salt"] == "fg:tenant-a:mine"


def test_unknown_engines_get_the_body_unchanged() -> None:
    body = {"model": "m", "prompt": "hi", "id_slot": 0}
    assert adapter_for("openai").prepare(body, "t") is body
