"""The real process driven with the official OpenAI SDK: shapes, streams, usage, cached tokens, /tokenize."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.sim.conftest import FAST, SimProcess, StartSim

SYSTEM = "You are a careful assistant who answers briefly. " * 12  # ~150 tokens: several 16-token blocks


def client(sim: SimProcess, **kw: Any) -> openai.AsyncOpenAI:
    """An SDK client without retries (a retry would hide what the server answered)."""
    return openai.AsyncOpenAI(base_url=sim.v1, api_key="unused", max_retries=0, **kw)


def messages(question: str) -> list[dict[str, str]]:
    """A system prompt shared across requests plus one question."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def raw_stream(sim: SimProcess, body: dict[str, Any]) -> list[str]:
    """The SSE `data:` payloads of a streamed request, as sent."""
    async with aiohttp.ClientSession() as s, s.post(sim.v1 + "/chat/completions", json=body) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    assert text.endswith("\n\n")
    return [line.removeprefix("data: ") for line in text.split("\n\n") if line]


@pytest.fixture
def sim(start_sim: StartSim) -> SimProcess:
    """A fresh simulator on the H100 profile, loaded at once."""
    return start_sim(*FAST, "--model", "smollm2")


async def test_chat_non_stream_has_vllms_shape_and_usage_agrees_with_tokenize(sim: SimProcess) -> None:
    c = client(sim)
    resp = await c.chat.completions.create(model="smollm2", messages=messages("Hi"), max_tokens=8, seed=3)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == "smollm2"
    choice = resp.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    assert resp.usage.prompt_tokens_details is None  # vLLM omits the details while nothing was cached
    status, body = sim.post("/tokenize", {"model": "smollm2", "messages": messages("Hi")})
    tok = json.loads(body)
    assert status == 200 and set(tok) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tok["count"] == len(tok["tokens"]) == resp.usage.prompt_tokens
    _, body = sim.post("/tokenize", {"prompt": choice.message.content, "return_token_strs": True})
    assert json.loads(body)["count"] == 8  # the answer re-tokenizes to the tokens it was generated as


async def test_stream_with_include_usage_is_framed_like_vllm(sim: SimProcess) -> None:
    body = {"model": "smollm2", "messages": messages("Hi"), "max_tokens": 5, "stream": True}
    events = await raw_stream(sim, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-1]
    assert len(content) == 5 and all(ch["object"] == "chat.completion.chunk" for ch in content)
    assert [ch["choices"][0]["finish_reason"] for ch in content] == [None] * 4 + ["length"]
    assert all("usage" not in ch for ch in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert "prompt_tokens_details" not in chunks[-1]["usage"]  # exclude_none on the usage chunk
    plain = await raw_stream(sim, body)  # without stream_options: no usage chunk at all
    assert plain[-1] == "[DONE]" and all(json.loads(e)["choices"] for e in plain[:-1])


async def test_second_identical_request_reports_block_granular_cached_tokens(sim: SimProcess) -> None:
    c = client(sim)
    first = await c.chat.completions.create(model="smollm2", messages=messages("Hello"), max_tokens=4)
    second = await c.chat.completions.create(model="smollm2", messages=messages("Hello"), max_tokens=4)
    assert first.usage is not None and second.usage is not None
    n = first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details is None
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16
    stream = await c.chat.completions.create(
        model="smollm2", messages=messages("Hello"), max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens_details is not None
    assert usage[0].prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16
    salted = await c.chat.completions.create(
        model="smollm2", messages=messages("Hello"), max_tokens=4, extra_body={"cache_salt": "tenant-b"}
    )
    assert salted.usage is not None and salted.usage.prompt_tokens_details is None


async def test_completions_stream_and_non_stream(sim: SimProcess) -> None:
    c = client(sim)
    resp = await c.completions.create(model="smollm2", prompt="Once upon a time", seed=1)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert resp.usage is not None and resp.usage.completion_tokens <= 16  # vLLM's default max_tokens
    stream = await c.completions.create(
        model="smollm2", prompt="Once upon a time", seed=1, stream=True, stream_options={"include_usage": True}
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].text)
        usage = chunk.usage or usage
    assert "".join(parts) == resp.choices[0].text
    assert usage is not None and usage.completion_tokens == resp.usage.completion_tokens


async def test_same_seed_same_text_stream_or_not_and_another_seed_differs(sim: SimProcess) -> None:
    c = client(sim)

    async def text(seed: int, stream: bool) -> str:
        kw: dict[str, Any] = {"model": "smollm2", "messages": messages("Tell me"), "max_tokens": 24, "seed": seed}
        if not stream:
            r = await c.chat.completions.create(**kw)
            return r.choices[0].message.content or ""
        s = await c.chat.completions.create(**kw, stream=True)
        return "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])

    a, b, other = await text(42, False), await text(42, True), await text(43, False)
    assert a == b and a != other
    r = await c.chat.completions.create(model="smollm2", messages=messages("Tell me"), max_tokens=24)
    r2 = await c.chat.completions.create(model="smollm2", messages=messages("Tell me"), max_tokens=24)
    assert r.choices[0].message.content == r2.choices[0].message.content  # no seed: a hash of the prompt


async def test_errors_have_vllms_shape(sim: SimProcess) -> None:
    c = client(sim)
    with pytest.raises(openai.NotFoundError) as nf:
        await c.chat.completions.create(model="gpt-4", messages=messages("x"), max_tokens=2)
    assert nf.value.body == {
        "message": "The model `gpt-4` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    with pytest.raises(openai.BadRequestError) as big:
        await c.chat.completions.create(model="smollm2", messages=messages("x"), max_tokens=10**6)
    assert "maximum context length" in str(big.value)
    status, _ = sim.post("/v1/chat/completions", {"model": "smollm2"})
    assert status == 400
