"""What an engine behind fleetgate must answer, written from what real vLLM 0.32 answered (../shared/ENGINES.md).

Every test takes `contract_engine` (tests/contract/conftest.py): today `sim-engine`, and real vLLM once its
parameter is added. The assertions are vLLM's observed behaviour, so where the simulator and vLLM differ, the
simulator fails here and is the one to fix.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fleetgate.engines.base import JsonPost
from fleetgate.engines.counters import EngineCounters
from fleetgate.engines.vllm import VLLM
from tests.contract.conftest import EngineFacts

# Common one-token English words: a prompt of N of them is about N tokens in any BPE vocabulary.
WORDS = ("the", "of", "and", "to", "in", "is", "it", "you", "that", "was", "for", "on", "are", "as", "with")


def long_prompt(words: int = 700) -> str:
    """A prompt that starts with a nonce (nothing cached from an earlier test) and spans several blocks."""
    rng = random.Random(words)
    return f"Ticket {uuid.uuid4().hex[:10]}. " + " ".join(rng.choice(WORDS) for _ in range(words))


def chat(engine: EngineFacts, content: str, **extra: Any) -> dict[str, Any]:
    """A short non-streamed chat completion; asserts 200."""
    body = {"model": engine.model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    status, data = engine.post("/v1/chat/completions", {"temperature": 0, **body, **extra})
    assert status == 200, data
    assert isinstance(data, dict)
    return data


def cached(usage: dict[str, Any]) -> int:
    """usage.prompt_tokens_details.cached_tokens; vLLM leaves the details null while nothing is cached."""
    details = usage.get("prompt_tokens_details")
    if details is None:
        return 0
    value = details["cached_tokens"]
    assert isinstance(value, int)
    return value


def whole_blocks(prompt_tokens: int, block_size: int) -> int:
    """What vLLM reports cached for a prompt seen before: whole blocks, never the last prompt token."""
    return (prompt_tokens - 1) // block_size * block_size


def check_usage(usage: dict[str, Any]) -> None:
    """prompt + completion = total, all integers."""
    assert {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(usage), usage
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"], usage


# ------------------------------------------------------------------------------------------------ OpenAI shapes


def test_models_lists_the_served_model(contract_engine: EngineFacts) -> None:
    status, data = contract_engine.get("/v1/models")
    assert status == 200 and data["object"] == "list", data
    base = data["data"][0]
    assert base["id"] == contract_engine.model and base["object"] == "model"
    assert isinstance(base["max_model_len"], int) and base["max_model_len"] > 0


def test_chat_completion_shape_and_usage(contract_engine: EngineFacts) -> None:
    data = chat(contract_engine, "Say hello.")
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["model"] == contract_engine.model and isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    check_usage(data["usage"])
    assert 1 <= data["usage"]["completion_tokens"] <= 4
    assert cached(data["usage"]) == 0  # a prompt shorter than one block cannot hit


def test_text_completion_shape(contract_engine: EngineFacts) -> None:
    body = {"model": contract_engine.model, "prompt": "The sky is", "max_tokens": 3, "temperature": 0}
    status, data = contract_engine.post("/v1/completions", body)
    assert status == 200, data
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert isinstance(data["choices"][0]["text"], str) and data["choices"][0]["finish_reason"] in ("stop", "length")
    check_usage(data["usage"])


def test_unknown_model_is_404_with_an_error_object(contract_engine: EngineFacts) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, data = contract_engine.post("/v1/chat/completions", body)
    assert status == 404, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]


# ---------------------------------------------------------------------------------------------- stream framing


def _chunks(events: list[str]) -> list[dict[str, Any]]:
    assert events[-1] == "[DONE]", events[-3:]
    assert "[DONE]" not in events[:-1]
    return [json.loads(e) for e in events[:-1]]


def test_stream_with_include_usage_ends_with_a_usage_chunk(contract_engine: EngineFacts) -> None:
    body = {
        "model": contract_engine.model,
        "messages": [{"role": "user", "content": "Count to three."}],
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = _chunks(contract_engine.stream("/v1/chat/completions", body))
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    *content, last = chunks
    # the usage chunk is last, alone: no choices; no chunk before it carries usage
    assert last["choices"] == [] and last["usage"] is not None
    check_usage(last["usage"])
    assert all(c.get("usage") is None for c in content)
    assert content[0]["choices"][0]["delta"].get("role") == "assistant"
    finishes = [c["choices"][0].get("finish_reason") for c in content if c["choices"]]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content if c["choices"])
    assert text and last["usage"]["completion_tokens"] <= 5


def test_stream_without_stream_options_has_no_usage_chunk(contract_engine: EngineFacts) -> None:
    body = {
        "model": contract_engine.model,
        "messages": [{"role": "user", "content": "Count to three."}],
        "max_tokens": 3,
        "stream": True,
    }
    chunks = _chunks(contract_engine.stream("/v1/chat/completions", body))
    assert all(c["choices"] for c in chunks)
    assert all(c.get("usage") is None for c in chunks)


def test_text_completion_stream_with_include_usage(contract_engine: EngineFacts) -> None:
    body = {
        "model": contract_engine.model,
        "prompt": "One two",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = _chunks(contract_engine.stream("/v1/completions", body))
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 3
    check_usage(chunks[-1]["usage"])


# -------------------------------------------------------------------------------------- cached tokens, cache_salt


def test_cached_tokens_come_in_whole_blocks(contract_engine: EngineFacts) -> None:
    prompt = long_prompt()
    first = chat(contract_engine, prompt)["usage"]
    n = first["prompt_tokens"]
    assert n > 3 * contract_engine.block_size, n  # the prompt spans several blocks
    assert cached(first) == 0  # a nonce no earlier request had
    second = chat(contract_engine, prompt)["usage"]
    assert second["prompt_tokens"] == n
    # e.g. vLLM CPU: 688 prompt tokens sent twice -> 640 cached (5 blocks of 128)
    assert cached(second) == whole_blocks(n, contract_engine.block_size), (n, second)
    assert cached(second) % contract_engine.block_size == 0


def test_cache_salt_isolates_the_prefix_cache(contract_engine: EngineFacts) -> None:
    prompt = long_prompt()
    a1 = chat(contract_engine, prompt, cache_salt="tenant-a")["usage"]
    a2 = chat(contract_engine, prompt, cache_salt="tenant-a")["usage"]
    b = chat(contract_engine, prompt, cache_salt="tenant-b")["usage"]
    unsalted = chat(contract_engine, prompt)["usage"]
    n = a1["prompt_tokens"]
    assert cached(a1) == 0
    assert cached(a2) == whole_blocks(n, contract_engine.block_size)  # same salt: hits
    assert cached(b) == 0  # another salt: nothing, although the text is cached
    assert cached(unsalted) == 0  # no salt is a namespace of its own


# ------------------------------------------------------------------------------------------------------ /tokenize


def test_tokenize_counts_what_the_chat_bills(contract_engine: EngineFacts) -> None:
    messages = [{"role": "user", "content": "How many tokens is this question?"}]
    status, tok = contract_engine.post("/tokenize", {"model": contract_engine.model, "messages": messages})
    assert status == 200, tok
    assert tok["count"] == len(tok["tokens"]) and all(isinstance(t, int) for t in tok["tokens"])
    assert isinstance(tok["max_model_len"], int)
    usage = chat(contract_engine, messages[0]["content"])["usage"]
    assert tok["count"] == usage["prompt_tokens"]  # same chat template, same tokenizer
    status, plain = contract_engine.post("/tokenize", {"model": contract_engine.model, "prompt": "hello world"})
    assert status == 200 and plain["count"] == len(plain["tokens"]) >= 2, plain


# -------------------------------------------------------------------------------------------------------- /metrics


GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
COUNTERS = (
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:prompt_tokens_cached",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:num_preemptions",
)
HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
)


def _families(engine: EngineFacts) -> dict[str, Any]:
    status, text = engine.get("/metrics")
    assert status == 200 and isinstance(text, str)
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_names_types_and_labels(contract_engine: EngineFacts) -> None:
    chat(contract_engine, "Warm the counters up.")
    families = _families(contract_engine)
    for name, kind in [*((g, "gauge") for g in GAUGES), *((c, "counter") for c in COUNTERS)]:
        assert name in families, f"{name} missing"
        assert families[name].type == kind, (name, families[name].type)
    for name in HISTOGRAMS:
        assert families[name].type == "histogram", name
    assert "vllm:gpu_cache_usage_perc" not in families  # renamed to kv_cache_usage_perc in V1
    running = families["vllm:num_requests_running"].samples[0]
    assert {"engine", "model_name"} <= set(running.labels) and running.labels["model_name"] == contract_engine.model
    names = {s.name for s in families["vllm:prefix_cache_queries"].samples}
    assert "vllm:prefix_cache_queries_total" in names  # counters are exposed with `_total`
    reasons = {s.labels.get("finished_reason") for s in families["vllm:request_success"].samples}
    assert {"stop", "length"} <= reasons
    info = families["vllm:cache_config_info"]
    assert info.type == "gauge" and info.samples[0].labels["block_size"] == str(contract_engine.block_size)
    lora = families["vllm:lora_requests_info"]  # with --enable-lora
    assert lora.type == "gauge"
    assert {"max_lora", "running_lora_adapters", "waiting_lora_adapters"} <= set(lora.samples[0].labels)


def test_prefix_counters_count_tokens(contract_engine: EngineFacts) -> None:
    def value(families: dict[str, Any], name: str) -> float:
        return sum(s.value for s in families[name].samples if s.name == name + "_total")

    before = _families(contract_engine)
    prompt = long_prompt()
    usage = chat(contract_engine, prompt)["usage"]
    usage2 = chat(contract_engine, prompt)["usage"]
    after = _families(contract_engine)
    queries = value(after, "vllm:prefix_cache_queries") - value(before, "vllm:prefix_cache_queries")
    hits = value(after, "vllm:prefix_cache_hits") - value(before, "vllm:prefix_cache_hits")
    prompt_total = value(after, "vllm:prompt_tokens") - value(before, "vllm:prompt_tokens")
    assert queries == usage["prompt_tokens"] + usage2["prompt_tokens"]
    assert hits == cached(usage2)
    assert prompt_total == usage["prompt_tokens"] + usage2["prompt_tokens"]  # cached tokens included


# ----------------------------------------------------------------------------------------------------------- LoRA


def test_lora_load_duplicate_use_unload(contract_engine: EngineFacts) -> None:
    name = f"contract-{uuid.uuid4().hex[:6]}"
    load = {"lora_name": name, "lora_path": contract_engine.lora_path}
    status, _ = contract_engine.post("/v1/load_lora_adapter", load)
    assert status == 200
    try:
        status, _ = contract_engine.post("/v1/load_lora_adapter", load)
        assert status == 400  # loading the same name again is refused
        status, models = contract_engine.get("/v1/models")
        cards = {m["id"]: m for m in models["data"]}
        assert name in cards and cards[name]["parent"] == contract_engine.model
        data = chat(contract_engine, "Hello adapter.", model=name)
        assert data["model"] == name
    finally:
        status, _ = contract_engine.post("/v1/unload_lora_adapter", {"lora_name": name})
    assert status == 200
    status, _ = contract_engine.post("/v1/unload_lora_adapter", {"lora_name": name})
    assert status == 404  # gone
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, _ = contract_engine.post("/v1/chat/completions", body)
    assert status == 404
    status, models = contract_engine.get("/v1/models")
    assert name not in {m["id"] for m in models["data"]}


# ------------------------------------------------------------------------------- the vLLM dialect (engines/vllm.py)


def _post_to(engine: EngineFacts) -> JsonPost:
    """The `post` the fleet hands a dialect, over this engine (blocking is fine in a test)."""

    async def post(path: str, body: dict[str, Any]) -> Any:
        status, data = engine.post(path, body)
        return data if status == 200 else None

    return post


async def test_the_dialect_counts_prompts_as_the_engine_bills_them(contract_engine: EngineFacts) -> None:
    assert VLLM.count_prompt is not None
    messages = [{"role": "user", "content": "Count me, " + long_prompt(40)}]
    counted = await VLLM.count_prompt({"model": contract_engine.model, "messages": messages}, _post_to(contract_engine))
    assert counted == chat(contract_engine, messages[0]["content"])["usage"]["prompt_tokens"]


def test_the_dialect_reads_the_token_counters_reconcile_compares(contract_engine: EngineFacts) -> None:
    def counters() -> EngineCounters:
        status, text = contract_engine.get("/metrics")
        assert status == 200 and isinstance(text, str)
        return VLLM.token_counters(text)

    prompt = long_prompt(300)
    chat(contract_engine, prompt)
    before = counters()
    usage = chat(contract_engine, prompt)["usage"]  # the second time its prefix is cached
    after = counters()
    assert before.prompt_total is not None and after.prompt_total is not None
    assert before.prompt_fresh is not None and after.prompt_fresh is not None
    assert after.prompt_total - before.prompt_total == usage["prompt_tokens"]
    assert after.prompt_fresh - before.prompt_fresh == usage["prompt_tokens"] - cached(usage) > 0
    assert after.completion - before.completion == usage["completion_tokens"]


def test_the_dialect_loads_and_unloads_adapters(contract_engine: EngineFacts) -> None:
    lora, name = VLLM.lora, f"dialect-{uuid.uuid4().hex[:6]}"
    assert lora is not None
    outcomes: list[str | None] = []
    for _ in range(2):
        status, detail = contract_engine.post(*lora.load_request(name, contract_engine.lora_path))
        outcomes.append(lora.load_outcome(status, json.dumps(detail)))
    for _ in range(2):
        outcomes.append(lora.unload_outcome(contract_engine.post(*lora.unload_request(name))[0]))
    assert outcomes == ["loaded", "already", "unloaded", "gone"]
