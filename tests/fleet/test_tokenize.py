"""Prompt counting over HTTP: the fleet gives each dialect a `post` to its engine and turns failures into None."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetgate.config import GatewayConfig
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.tokenize import count_prompt_tokens
from tests.fakes import free_port

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def engine() -> AsyncIterator[str]:
    """One local server answering as a llama-server under /llama and a vLLM under /vllm."""
    stall = asyncio.Event()

    async def apply_template(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"prompt": "<|user|>" + body["messages"][0]["content"]})

    async def llama_tokenize(request: web.Request) -> web.Response:
        content = (await request.json())["content"]
        return web.json_response({"tokens": list(range(len(content)))})

    async def vllm_tokenize(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"count": 11 if "messages" in body else 3})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="not json", status=200)

    async def refused(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "no"}}, status=500)

    async def slow(request: web.Request) -> web.Response:
        await stall.wait()  # never set: the caller's timeout ends it
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/llama/apply-template", apply_template)
    app.router.add_post("/llama/tokenize", llama_tokenize)
    app.router.add_post("/vllm/tokenize", vllm_tokenize)
    app.router.add_post("/broken/tokenize", broken)
    app.router.add_post("/refused/tokenize", refused)
    app.router.add_post("/slow/tokenize", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    stall.set()
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[EngineClient]:
    c = EngineClient(GatewayConfig())
    await c.start()
    yield c
    await c.close()


async def test_each_dialect_counts_with_its_engine(engine: str, client: EngineClient) -> None:
    assert await count_prompt_tokens(client, "llamacpp", f"{engine}/llama", CHAT) == len("<|user|>hi")
    assert await count_prompt_tokens(client, "vllm", f"{engine}/vllm", CHAT) == 11
    assert await count_prompt_tokens(client, "sglang", f"{engine}/vllm", {"model": "m", "prompt": "x"}) == 3
    assert await count_prompt_tokens(client, "openai", f"{engine}/vllm", CHAT) is None  # no tokenizer to ask


async def test_an_engine_that_cannot_tell_counts_nothing(engine: str, client: EngineClient) -> None:
    assert await count_prompt_tokens(client, "vllm", f"{engine}/broken", CHAT) is None
    assert await count_prompt_tokens(client, "vllm", f"{engine}/refused", CHAT) is None
    assert await count_prompt_tokens(client, "vllm", f"{engine}/slow", CHAT, timeout=0.2) is None
    assert await count_prompt_tokens(client, "vllm", f"http://127.0.0.1:{free_port()}", CHAT) is None
