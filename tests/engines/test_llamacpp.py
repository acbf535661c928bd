"""The llama.cpp dialect: request fields, slots, context, token counters, tokenizer and running counts."""

from __future__ import annotations

import pytest

from fleetgate.engines.counters import CountersError, EngineCounters
from fleetgate.engines.llamacpp import LLAMACPP, running_usage
from tests.engines.samples import LLAMACPP_AFTER_3, VLLM
from tests.engines.scripted import ScriptedEngine


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
    sent = LLAMACPP.prepare(body, "tenant-a")
    assert sent == {"model": "m", "messages": [], "top_k": 5}
    assert body["id_slot"] == 1  # the parsed request itself is left alone (metering and the I/O log read it)


def test_streams_ask_for_running_counts() -> None:
    body = {"model": "m", "prompt": "hi", "stream": True, "stream_options": {"continuous_usage_stats": True}}
    sent = LLAMACPP.prepare(body, "t")
    assert sent["timings_per_token"] is True and sent["stream_options"] == {}
    assert "timings_per_token" not in LLAMACPP.prepare({"model": "m", "prompt": "hi"}, "t")


def test_slots_and_context_come_from_props_and_model_meta() -> None:
    assert LLAMACPP.slots is not None and LLAMACPP.slots.path == "/props"
    assert LLAMACPP.slots.read({"total_slots": 2, "default_generation_settings": {}}) == 2
    assert [LLAMACPP.slots.read(p) for p in ({"total_slots": 0}, {"total_slots": True}, {}, None)] == [None] * 4
    listing = {"data": [{"id": "m", "owned_by": "llamacpp", "meta": {"n_ctx": 4096, "n_ctx_train": 8192}}]}
    assert LLAMACPP.context_len(listing) == 4096
    assert LLAMACPP.context_len({"data": [{"id": "m", "max_model_len": 2048}]}) is None  # not llama.cpp's shape
    assert not LLAMACPP.runtime_lora and not LLAMACPP.salts_cache


def test_counters_exclude_cached_tokens_and_have_no_start() -> None:
    # prompt_tokens_total 63 = 36 + 1 + 26 fresh; cached 42 = 0 + 35 + 7; predicted 40 = 12 + 8 + 20.
    assert LLAMACPP.token_counters(LLAMACPP_AFTER_3) == EngineCounters(63, 105, 40, started_at=None)
    without_cached = "\n".join(line for line in LLAMACPP_AFTER_3.splitlines() if "cached" not in line) + "\n"
    assert LLAMACPP.token_counters(without_cached) == EngineCounters(63, None, 40)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "llamacpp:prompt_tokens_total"),
        (LLAMACPP_AFTER_3.replace("tokens_predicted_total", "x"), "--metrics"),
        (VLLM, "start llama-server with --metrics"),
        ("llamacpp:prompt_tokens_total one two\n", "unreadable"),
    ],
)
def test_unusable_metrics(text: str, message: str) -> None:
    with pytest.raises(CountersError, match=message):
        LLAMACPP.token_counters(text)


async def test_a_chat_prompt_is_rendered_by_the_engine_then_tokenized() -> None:
    engine = ScriptedEngine({"/apply-template": {"prompt": "<|user|>hi"}, "/tokenize": {"tokens": [1, 2, 3, 4]}})
    messages = [{"role": "user", "content": "hi"}]
    assert LLAMACPP.count_prompt is not None
    assert await LLAMACPP.count_prompt({"model": "m", "messages": messages}, engine.post) == 4
    assert engine.calls == [("/apply-template", {"messages": messages}), ("/tokenize", {"content": "<|user|>hi"})]


async def test_a_completion_prompt_is_tokenized_as_sent_and_odd_answers_count_nothing() -> None:
    engine = ScriptedEngine({"/tokenize": {"tokens": [7, 8]}})
    assert LLAMACPP.count_prompt is not None
    assert await LLAMACPP.count_prompt({"model": "m", "prompt": "hello"}, engine.post) == 2
    assert engine.calls == [("/tokenize", {"content": "hello"})]
    assert await LLAMACPP.count_prompt({"model": "m", "prompt": ["a", "b"]}, engine.post) is None  # not a string
    assert await LLAMACPP.count_prompt({"messages": []}, ScriptedEngine({}).post) is None  # template refused
    odd = ScriptedEngine({"/apply-template": {"prompt": 5}, "/tokenize": {"tokens": "x"}})
    assert await LLAMACPP.count_prompt({"messages": []}, odd.post) is None
    assert await LLAMACPP.count_prompt({"prompt": "x"}, odd.post) is None


def test_running_counts_of_the_latest_chunk_with_timings() -> None:
    chunks = [
        {"choices": []},
        {"timings": {"prompt_n": 8, "cache_n": 213, "predicted_n": 6}},
        {"timings": {"prompt_n": 8, "cache_n": 213, "predicted_n": 5}},
    ]
    assert running_usage(iter(chunks)) == {
        "prompt_tokens": 221,
        "completion_tokens": 6,
        "total_tokens": 227,
        "prompt_tokens_details": {"cached_tokens": 213},
    }
    # The latest timings decide, even when they cannot be read: older counts would bill too little.
    assert running_usage([{"timings": {"prompt_n": -1, "cache_n": 0, "predicted_n": 1}}, *chunks[1:]]) is None
    assert running_usage([{"timings": {"prompt_n": True, "cache_n": 0, "predicted_n": 1}}]) is None
    assert running_usage([None, {"choices": []}]) is None
