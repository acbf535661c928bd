"""The vLLM dialect: request fields and cache salt, context, token counters, tokenizer and LoRA endpoints."""

from __future__ import annotations

import pytest

from fleetgate.engines.counters import CountersError, EngineCounters
from fleetgate.engines.vllm import VLLM
from tests.engines.samples import LLAMACPP_AFTER_3
from tests.engines.samples import VLLM as VLLM_TEXT
from tests.engines.scripted import ScriptedEngine


def test_vllm_gets_the_tenant_salt_and_loses_its_scheduling_controls() -> None:
    body = {"model": "m", "prompt": "hi", "id_slot": 1, "priority": -100, "kv_transfer_params": {}, "min_p": 0.1}
    sent = VLLM.prepare(body, "tenant-a")
    assert sent == {"model": "m", "prompt": "hi", "min_p": 0.1, "cache_salt": "fg:tenant-a"}
    assert VLLM.prepare({**body, "cache_salt": "mine"}, "tenant-a")["cache_salt"] == "fg:tenant-a:mine"


def test_stream_options_keep_what_vllm_reads() -> None:
    options = {"include_usage": True, "continuous_usage_stats": True, "other": 1}
    sent = VLLM.prepare({"model": "m", "prompt": "hi", "stream_options": options}, "t")
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_context_comes_from_max_model_len() -> None:
    listing = {"data": [{"id": "b", "max_model_len": 2048}, {"id": "a", "parent": "b", "max_model_len": 4096}]}
    assert VLLM.context_len(listing) == 2048
    assert VLLM.context_len({"data": [{"id": "m", "max_model_len": True}]}) is None


def test_counters_sum_labelled_series_and_say_when_they_began() -> None:
    assert VLLM.token_counters(VLLM_TEXT) == EngineCounters(prompt_fresh=372, prompt_total=500, completion=120)
    started = VLLM_TEXT + "process_start_time_seconds 1.7954e+09\n"
    assert VLLM.token_counters(started).started_at == 1.7954e09


def test_counters_without_a_cached_counter_read_the_fresh_part_by_source() -> None:
    plain = "\n".join(line for line in VLLM_TEXT.splitlines() if "cached" not in line) + "\n"
    assert VLLM.token_counters(plain) == EngineCounters(None, 500, 120)
    by_source = plain + (
        'vllm:prompt_tokens_by_source_total{engine="0",model_name="smollm2",source="local_compute"} 172.0\n'
        'vllm:prompt_tokens_by_source_total{engine="0",model_name="smollm2",source="local_cache_hit"} 128.0\n'
        'vllm:prompt_tokens_by_source_total{engine="1",model_name="smollm2",source="local_compute"} 200.0\n'
    )
    assert VLLM.token_counters(by_source).prompt_fresh == 372


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LLAMACPP_AFTER_3, "vllm:prompt_tokens_total"),
        ('vllm:prompt_tokens_total{engine="0" 1\n', "unreadable"),
    ],
)
def test_unusable_metrics(text: str, message: str) -> None:
    with pytest.raises(CountersError, match=message):
        VLLM.token_counters(text)


async def test_tokenize_takes_the_request_itself() -> None:
    engine = ScriptedEngine({"/tokenize": {"count": 12, "tokens": list(range(12)), "max_model_len": 2048}})
    assert VLLM.count_prompt is not None
    messages = [{"role": "user", "content": "hi"}]
    assert await VLLM.count_prompt({"model": "m", "messages": messages, "top_k": 3}, engine.post) == 12
    assert await VLLM.count_prompt({"model": "m", "prompt": "hello"}, engine.post) == 12
    assert engine.calls == [
        ("/tokenize", {"model": "m", "messages": messages}),
        ("/tokenize", {"model": "m", "prompt": "hello"}),
    ]
    assert await VLLM.count_prompt({"model": "m", "prompt": "x"}, ScriptedEngine({}).post) is None
    assert await VLLM.count_prompt({"prompt": "x"}, ScriptedEngine({"/tokenize": {"count": "9"}}).post) is None


def test_lora_endpoints_and_what_their_answers_mean() -> None:
    lora = VLLM.lora
    assert lora is not None and VLLM.runtime_lora
    assert lora.load_request("sql", "/adapters/sql") == (
        "/v1/load_lora_adapter",
        {"lora_name": "sql", "lora_path": "/adapters/sql"},
    )
    assert lora.unload_request("sql") == ("/v1/unload_lora_adapter", {"lora_name": "sql"})
    assert lora.load_outcome(200, "") == "loaded"
    assert lora.load_outcome(400, "The lora adapter 'sql' has already been loaded.") == "already"
    assert lora.load_outcome(400, "LoRA is not enabled") is None
    assert lora.load_outcome(500, "already") is None
    assert [lora.unload_outcome(s) for s in (200, 404, 400, 500)] == ["unloaded", "gone", None, None]
