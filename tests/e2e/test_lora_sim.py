"""LoRA adapters and cache isolation end to end, against 3 real `sim-engine` processes (vLLM's LoRA and
`cache_salt` contract) behind a real `fleetgate up` gateway.

Adapters are registered through the admin API; each tenant sees and uses only its own; a cold adapter is loaded
on demand (once, however many requests ask at the same time) onto a replica that then keeps getting its traffic;
the ledger records the adapter on every event; and the gateway salts vLLM's prefix cache per tenant, so one
tenant's cached prefix is never hit by another.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.e2e.sim_fleet import ADMIN, gateway, gateway_config, get, sim_engines, tenant_key

pytestmark = pytest.mark.e2e

SIM_ARGS = ("--profile", "h100-llama3-8b", "--cold-load-s", "0", "--time-scale", "5", "--max-loras", "2")
LONG_PROMPT = " ".join(f"token{i}" for i in range(400))  # several KV blocks


@dataclass
class Fleet:
    """Three sim-engines behind one gateway."""

    url: str
    engines: list[str]

    def adapter_loads(self) -> int:
        """Loads the engines themselves performed."""
        return sum(json.loads(get(f"{e}/sim/state")[1])["adapter_loads"] for e in self.engines)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("lora_sim")
    with sim_engines(tmp, 3, SIM_ARGS) as engines:
        # Named as plain OpenAI engines: the gateway must recognise vLLM from the engines' own model lists.
        config = gateway_config(engines, adapters={"max_per_replica": 2})
        config["engines"] = [{"url": url, "id": f"sim-{i}"} for i, url in enumerate(engines)]
        with gateway(tmp / "gw", config) as url:
            yield Fleet(url, engines)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _register(http: aiohttp.ClientSession, url: str, name: str, owner: str) -> None:
    body = {"base_model": "smollm2", "path": f"/adapters/{name}", "owners": [owner]}
    async with http.put(f"{url}/admin/adapters/{name}", json=body, headers=ADMIN) as resp:
        assert resp.status in (200, 201), await resp.text()


async def _chat(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], model: str, content: str = "Say hi"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), {k.lower(): v for k, v in resp.headers.items()}


@pytest.fixture(scope="module")
def keys(fleet: Fleet) -> dict[str, dict[str, str]]:
    """Tenants alpha (owns a1, a2) and beta (owns b1), with keys."""

    async def setup() -> dict[str, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            found = {name: await tenant_key(http, fleet.url, name) for name in ("alpha", "beta")}
            for name, owner in (("a1", "alpha"), ("a2", "alpha"), ("b1", "beta")):
                await _register(http, fleet.url, name, owner)
            return found

    return asyncio.run(setup())


async def test_engines_are_recognised_as_vllm(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fleet.url}/admin/fleet", headers=ADMIN) as resp:
        kinds = {r["id"]: r["kind"] for r in await resp.json()}
    assert kinds == {"sim-0": "vllm", "sim-1": "vllm", "sim-2": "vllm"}


async def test_each_tenant_sees_and_uses_only_its_adapters(
    fleet: Fleet, keys: dict[str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{fleet.url}/v1/models", headers=keys["alpha"]) as resp:
        listed = {m["id"]: m.get("parent") for m in (await resp.json())["data"]}
    assert listed == {"smollm2": None, "a1": "smollm2", "a2": "smollm2"}
    loads = fleet.adapter_loads()
    status, body, _ = await _chat(http, fleet.url, keys["beta"], "a1")
    assert status == 404 and "a1" in body["error"]["message"] and "a2" not in body["error"]["message"]
    status, body, _ = await _chat(http, fleet.url, keys["beta"], "smollm2:nope")
    assert status == 404 and body["error"]["param"] == "model"
    assert fleet.adapter_loads() == loads  # a refused adapter is never loaded


async def test_cold_adapter_loads_once_then_stays_warm_where_it_is(
    fleet: Fleet, keys: dict[str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    loads = fleet.adapter_loads()
    # Four requests at once for a cold adapter: one load, and all of them follow it to its replica.
    first = await asyncio.gather(*(_chat(http, fleet.url, keys["alpha"], "a2") for _ in range(4)))
    assert all(status == 200 for status, _, _ in first), first
    assert {h["x-fleetgate-adapter-load"] for _, _, h in first} == {"cold"}
    assert fleet.adapter_loads() == loads + 1
    home = {h["x-fleetgate-replica"] for _, _, h in first}
    assert len(home) == 1
    for _ in range(3):
        status, body, headers = await _chat(http, fleet.url, keys["alpha"], "smollm2:a2")
        assert status == 200 and body["model"] == "a2"
        assert headers["x-fleetgate-adapter-load"] == "warm" and {headers["x-fleetgate-replica"]} == home
    assert fleet.adapter_loads() == loads + 1
    async with http.get(f"{fleet.url}/admin/adapters/a2", headers=ADMIN) as resp:
        assert (await resp.json())["loaded_on"] == sorted(home)  # from the engine's own answer


async def test_ledger_records_the_adapter(
    fleet: Fleet, keys: dict[str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    status, _, headers = await _chat(http, fleet.url, keys["alpha"], "a1")
    assert status == 200
    deadline = time.monotonic() + 10  # the flusher delivers within its interval
    while True:
        async with http.get(f"{fleet.url}/admin/usage/events?tenant=alpha&limit=500", headers=ADMIN) as resp:
            events = (await resp.json())["data"]
        mine = [e for e in events if e["event_id"] == headers["x-request-id"]]
        if mine:
            break
        assert time.monotonic() < deadline, "the event never reached the ledger"
        await asyncio.sleep(0.1)
    assert mine[0]["model"] == "smollm2" and mine[0]["adapter"] == "a1" and mine[0]["engine"] == "vllm"


async def test_prefix_cache_is_salted_per_tenant(
    fleet: Fleet, keys: dict[str, dict[str, str]], http: aiohttp.ClientSession
) -> None:
    # The same session id for both tenants: the same replica (the ring does not look at the tenant), so both
    # reach one engine cache and only the salt can keep them apart.
    cached, replicas = [], set()
    for tenant in ("alpha", "alpha", "beta"):
        headers = {**keys[tenant], "x-session-id": "salt-check"}
        status, body, answer = await _chat(http, fleet.url, headers, "smollm2", LONG_PROMPT)
        assert status == 200
        cached.append((body["usage"]["prompt_tokens_details"] or {}).get("cached_tokens", 0))  # vLLM: null for 0
        replicas.add(answer["x-fleetgate-replica"])
    assert len(replicas) == 1, replicas
    assert cached[0] == 0 and cached[1] > 0  # alpha hits its own prefix
    assert cached[2] == 0  # beta, same engine, same prompt: never alpha's cache
