"""Health checks read what an engine is from its own answers: kind, base models, loaded adapters, context."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetgate.config import GatewayConfig
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.health import HealthChecker
from fleetgate.fleet.replicas import Replica, ReplicaRegistry

VLLM_LISTING = {
    "object": "list",
    "data": [
        {"id": "smollm2", "object": "model", "owned_by": "vllm", "parent": None, "max_model_len": 2048},
        {"id": "sql-lora", "object": "model", "owned_by": "vllm", "parent": "smollm2", "max_model_len": 2048},
    ],
}
LLAMACPP_LISTING = {
    "object": "list",
    "data": [{"id": "smollm2", "object": "model", "owned_by": "llamacpp", "meta": {"n_ctx": 4096, "n_vocab": 49152}}],
}
LISTING = web.AppKey("listing", dict)  # {"now": the model list the engine answers}


@pytest.fixture
async def engine() -> AsyncIterator[TestServer]:
    async def models(request: web.Request) -> web.Response:
        return web.json_response(request.app[LISTING]["now"])

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "not JSON"}}, status=400)  # what the route probe gets

    app = web.Application()
    app[LISTING] = {"now": VLLM_LISTING}
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_plain_engine_is_recognised_and_adapters_are_not_bases(engine: TestServer) -> None:
    client = EngineClient(GatewayConfig())
    await client.start()
    try:
        replica = Replica(id="e0", url=str(engine.make_url("")).rstrip("/"))  # named by URL only: kind "openai"
        checker = HealthChecker(ReplicaRegistry([replica]), client, interval=60, timeout=2)
        await checker.check(replica)
        assert replica.healthy and replica.kind == "vllm"
        assert replica.models == {"smollm2"} and replica.adapters == {"sql-lora"} and replica.context_len == 2048
        # A load or unload by this gateway since the list was fetched wins over the list.
        epoch = replica.adapter_epoch
        replica.adapters, replica.adapter_epoch = set(), epoch + 1

        original = client.get_json

        async def list_then_unload(url: str, timeout: float) -> object:
            answer = await original(url, timeout)
            replica.adapter_epoch += 1  # an unload finished while the list was in flight
            return answer

        client.get_json = list_then_unload  # type: ignore[method-assign]
        await checker.check(replica)
        assert replica.adapters == set()
        client.get_json = original  # type: ignore[method-assign]
        await checker.check(replica)
        assert replica.adapters == {"sql-lora"}
    finally:
        await client.close()


async def test_each_dialect_reads_its_own_context_window(engine: TestServer) -> None:
    engine.app[LISTING]["now"] = LLAMACPP_LISTING
    client = EngineClient(GatewayConfig())
    await client.start()
    try:
        plain = Replica(id="e0", url=str(engine.make_url("")).rstrip("/"))
        named = Replica(id="e1", url=plain.url, kind="vllm")  # config says vLLM: the listing does not change it
        checker = HealthChecker(ReplicaRegistry([plain, named]), client, interval=60, timeout=2)
        await checker.check_all()
        assert (plain.healthy, plain.kind, plain.context_len) == (True, "llamacpp", 4096)
        assert (named.healthy, named.kind, named.context_len) == (True, "vllm", None)  # no `max_model_len` there
    finally:
        await client.close()
