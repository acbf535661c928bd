"""The process as operations see it: /metrics, /v1/models and LoRA, health while loading, client hang-ups."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.sim.conftest import FAST, StartSim
from tests.sim.test_server_api import client, messages


def scrape(text: str) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    """family name -> (type, {sorted labels of a sample named like the family's sample: value})."""
    out = {}
    for fam in text_string_to_metric_families(text):
        samples = {(s.name, *sorted(s.labels.items())): s.value for s in fam.samples}
        out[fam.name] = (fam.type, samples)
    return out  # type: ignore[return-value]


def value(families: dict, name: str, sample: str, **labels: str) -> float:  # type: ignore[type-arg]
    """One sample's value, labels matched exactly."""
    _, samples = families[name]
    return float(samples[(sample, *sorted({"model_name": "smollm2", "engine": "0", **labels}.items()))])


async def test_metrics_names_types_labels_and_values_after_a_request_mix(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--time-scale", "10")
    c = client(sim)
    usages = []
    for q in ("one", "one", "two"):
        r = await c.chat.completions.create(model="smollm2", messages=messages(q), max_tokens=6)
        usages.append(r.usage)
    s = await c.chat.completions.create(
        model="smollm2", messages=messages("three"), max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    usages += [ch.usage async for ch in s if ch.usage]
    stop = await c.completions.create(model="smollm2", prompt="A", max_tokens=500, seed=5)
    usages.append(stop.usage)
    assert stop.choices[0].finish_reason == "stop"
    _, body = sim.get("/metrics")
    fams = scrape(body.decode())
    types = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:prompt_tokens_cached": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
        "vllm:cache_config_info": "gauge",
        "vllm:lora_requests_info": "gauge",
    }
    assert {name: fams[name][0] for name in types} == types
    prompt = sum(u.prompt_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages if u.prompt_tokens_details)
    generated = sum(u.completion_tokens for u in usages)
    assert cached > 0
    assert value(fams, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt
    assert value(fams, "vllm:prompt_tokens_cached", "vllm:prompt_tokens_cached_total") == cached
    assert value(fams, "vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total") == cached
    assert value(fams, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") == prompt
    assert value(fams, "vllm:generation_tokens", "vllm:generation_tokens_total") == generated
    success = "vllm:request_success_total"
    assert value(fams, "vllm:request_success", success, finished_reason="length") == 4
    assert value(fams, "vllm:request_success", success, finished_reason="stop") == 1
    assert value(fams, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count") == 5
    assert value(fams, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == generated - 5
    assert value(fams, "vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_count") == 5
    assert value(fams, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") == 0
    info = fams["vllm:cache_config_info"][1]
    assert any(("block_size", "16") in key and ("engine", "0") in key for key in info)
    assert not any(name.endswith("_created") for name in body.decode().split())


async def test_models_lists_adapters_with_parent_and_lora_endpoints_answer_like_vllm(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--max-loras", "1")
    c = client(sim)
    status, text = sim.post("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": "/adapters/sql"})
    assert (status, text) == (200, b"Success: LoRA adapter 'sql' added successfully.")
    status, body = sim.post("/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": "/adapters/sql"})
    assert status == 400 and json.loads(body)["error"]["type"] == "InvalidUserInput"
    assert sim.post("/v1/load_lora_adapter", {"lora_name": "sql"})[0] == 400
    cards = {m.id: m for m in (await c.models.list()).data}
    assert set(cards) == {"smollm2", "sql"}
    assert cards["sql"].model_extra == {
        **(cards["sql"].model_extra or {}),
        "parent": "smollm2",
        "root": "/adapters/sql",
    }
    assert (cards["smollm2"].model_extra or {})["parent"] is None
    a = await c.chat.completions.create(model="sql", messages=messages("q"), max_tokens=6, seed=1)
    b = await c.chat.completions.create(model="smollm2", messages=messages("q"), max_tokens=6, seed=1)
    assert a.model == "sql" and a.choices[0].message.content != b.choices[0].message.content
    status, body = sim.post("/v1/unload_lora_adapter", {"lora_name": "nope"})
    assert status == 404 and json.loads(body)["error"]["code"] == 404
    assert sim.post("/v1/unload_lora_adapter", {"lora_name": "sql"})[0] == 200
    try:
        await c.chat.completions.create(model="sql", messages=messages("q"), max_tokens=2)
        raise AssertionError("an unloaded adapter must be 404")
    except openai.NotFoundError as exc:
        assert exc.status_code == 404 and "does not exist" in str(exc)


async def test_health_is_503_while_the_model_loads_and_the_process_listens_at_once(start_sim: StartSim) -> None:
    sim = start_sim("--profile", "h100-llama3-8b", "--cold-load-s", "1.5", wait_loaded=False)
    assert sim.startup_s < 1.0  # listening (answering 503) well under a second after the spawn
    assert sim.get("/health")[0] == 503
    status, body = sim.post("/v1/completions", {"model": "smollm2", "prompt": "x"})
    assert status == 503 and json.loads(body)["error"]["code"] == 503
    deadline = time.monotonic() + 5
    while sim.get("/health")[0] != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_client_hang_up_aborts_the_sequence_and_frees_its_blocks(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--fault-slow-stream", "5")
    body = {"model": "smollm2", "messages": messages("long"), "max_tokens": 2000, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(sim.v1 + "/chat/completions", json=body) as resp:
        for _ in range(3):
            await resp.content.readline()
        assert sim.state()["kv_blocks_used"] > 0
    deadline = time.monotonic() + 5
    while (state := sim.state())["kv_blocks_used"] or state["running"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert state["finished"] == {"abort": 1}


async def test_max_num_seqs_queues_the_rest_and_the_gauges_show_it(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--max-num-seqs", "1", "--fault-slow-stream", "5")
    c = client(sim)
    tasks = [
        asyncio.create_task(
            c.chat.completions.create(
                model="smollm2", messages=messages(q), max_tokens=20, extra_body={"ignore_eos": True}
            )
        )
        for q in ("a", "b")
    ]
    deadline = time.monotonic() + 5
    while (state := sim.state())["waiting"] != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert state["running"] == 1
    fams = scrape(sim.get("/metrics")[1].decode())
    assert value(fams, "vllm:num_requests_waiting", "vllm:num_requests_waiting") == 1
    assert value(fams, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc") > 0
    done = await asyncio.gather(*tasks)
    assert [r.usage.completion_tokens if r.usage else None for r in done] == [20, 20]


async def test_a_non_stream_client_timing_out_aborts_its_sequence_too(start_sim: StartSim) -> None:
    sim = start_sim(*FAST, "--fault-slow-stream", "10")
    body = {"model": "smollm2", "messages": messages("long"), "max_tokens": 3000, "ignore_eos": True}
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        try:
            async with s.post(sim.v1 + "/chat/completions", json=body) as resp:
                await resp.read()
            raise AssertionError("the request should not have finished")
        except TimeoutError:
            pass
    deadline = time.monotonic() + 5
    while (state := sim.state())["finished"] != {"abort": 1}:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert state["kv_blocks_used"] == 0 and state["running"] == 0
