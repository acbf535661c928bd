"""The LoRA pool against a vLLM-shaped engine (the simulator's real HTTP app on 127.0.0.1): load on demand,
single flight, LRU unload at the limit, busy and pinned adapters kept, failures as clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fleetgate.config import GatewayConfig
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica
from fleetgate.lora.catalog import Adapter, AdapterCatalog
from fleetgate.lora.pool import AdapterLoadError, AdapterPool
from fleetgate.sim.profiles import load_profile
from fleetgate.sim.server import STATE, build_app
from fleetgate.sim.state import SimOptions

LOAD_S = 0.2  # the simulated engine's adapter load time


@dataclass
class Engine:
    """One simulated vLLM replica and the gateway's view of it."""

    server: TestServer
    replica: Replica

    def loads(self) -> int:
        """Loads the engine itself performed."""
        return int(self.server.app[STATE].lora.loads)

    def registered(self) -> set[str]:
        """Adapters the engine itself holds."""
        return set(self.server.app[STATE].lora.adapters)


class StaticCatalog(AdapterCatalog):
    """A catalog with fixed records (the store-backed one is tested in tests/tenancy)."""

    def __init__(self, adapters: list[Adapter]) -> None:
        self._by_name = {a.name: a for a in adapters}


def adapter(name: str, pinned: bool = False) -> Adapter:
    """A registry record."""
    now = datetime.now(UTC)
    return Adapter(
        name=name, base_model="smollm2", path=f"/adapters/{name}", pinned=pinned, created_at=now, updated_at=now
    )


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    profile = load_profile("h100-llama3-8b").with_overrides(cold_load_s=0, max_loras=4)
    profile = profile.model_copy(update={"lora_load_s": LOAD_S})
    app: web.Application = build_app(profile, SimOptions())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Engine(server, Replica(id="vllm-0", url=str(server.make_url("")).rstrip("/"), kind="vllm", healthy=True))
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[EngineClient]:
    c = EngineClient(GatewayConfig())
    await c.start()
    yield c
    await c.close()


def pool_for(client: EngineClient, adapters: list[Adapter], limit: int = 2) -> AdapterPool:
    """A pool with room for `limit` adapters per replica."""
    return AdapterPool(client, StaticCatalog(adapters), max_per_replica=limit, load_timeout=5.0)


async def test_cold_load_once_then_warm(engine: Engine, client: EngineClient) -> None:
    a1 = adapter("a1")
    pool = pool_for(client, [a1])
    assert await pool.ensure(engine.replica, a1) is True
    assert "a1" in engine.replica.adapters and engine.registered() == {"a1"}
    assert await pool.ensure(engine.replica, a1) is False  # warm: no call to the engine
    assert engine.loads() == 1 and pool.loads == 1


async def test_concurrent_requests_for_one_cold_adapter_cause_one_load(engine: Engine, client: EngineClient) -> None:
    a1 = adapter("a1")
    pool = pool_for(client, [a1])
    results = await asyncio.gather(*(pool.ensure(engine.replica, a1) for _ in range(8)))
    assert all(results)  # every caller waited for the load
    assert engine.loads() == 1 and pool.loads == 1


async def test_an_adapter_another_gateway_loaded_is_taken_as_loaded(engine: Engine, client: EngineClient) -> None:
    a1 = adapter("a1")
    first, second = pool_for(client, [a1]), pool_for(client, [a1])
    other_view = Replica(id=engine.replica.id, url=engine.replica.url, kind="vllm", healthy=True)
    outcomes: list[str] = []
    second.observer = lambda replica, name, outcome, seconds: outcomes.append(outcome)
    await first.ensure(engine.replica, a1)
    assert await second.ensure(other_view, a1) is True  # the engine answers 400 "already loaded"
    assert other_view.adapters == {"a1"} and outcomes == ["already"]
    assert engine.loads() == 1 and (first.loads, second.loads) == (1, 0)
    await second.unload(other_view, "a1")
    await first.unload(engine.replica, "a1")  # gone already: the engine's 404 is not a failure
    assert (
        engine.registered() == set() and engine.replica.adapters == set() and (first.unloads, second.unloads) == (0, 1)
    )


async def test_least_recently_used_idle_adapter_is_unloaded_at_the_limit(engine: Engine, client: EngineClient) -> None:
    a1, a2, a3 = adapter("a1"), adapter("a2"), adapter("a3")
    pool = pool_for(client, [a1, a2, a3], limit=2)
    await pool.ensure(engine.replica, a1)
    await pool.ensure(engine.replica, a2)
    with pool.using(engine.replica, "a1"):  # a1 used after a2: a2 is now the least recently used
        pass
    await pool.ensure(engine.replica, a3)
    assert engine.registered() == {"a1", "a3"} and engine.replica.adapters == {"a1", "a3"}
    assert pool.unloads == 1


async def test_popular_adapters_outlive_recent_ones(engine: Engine, client: EngineClient) -> None:
    hot, tail, new = adapter("hot"), adapter("tail"), adapter("new")
    pool = pool_for(client, [hot, tail, new], limit=2)
    await pool.ensure(engine.replica, hot)
    await pool.ensure(engine.replica, tail)
    for _ in range(5):
        with pool.using(engine.replica, "hot"):
            pass
    with pool.using(engine.replica, "tail"):  # the most recent, but used once
        pass
    await pool.ensure(engine.replica, new)
    assert engine.registered() == {"hot", "new"}  # LRU would have evicted `hot`


async def test_busy_and_pinned_adapters_are_never_unloaded(engine: Engine, client: EngineClient) -> None:
    pinned, busy, new = adapter("p", pinned=True), adapter("busy"), adapter("new")
    pool = pool_for(client, [pinned, busy, new], limit=2)
    await pool.ensure(engine.replica, pinned)
    await pool.ensure(engine.replica, busy)
    with pool.using(engine.replica, "busy"):
        await pool.ensure(engine.replica, new)  # nothing idle to unload: loads over the limit rather than fail
    assert engine.registered() == {"p", "busy", "new"} and pool.unloads == 0


async def test_pinned_adapters_are_loaded_onto_every_capable_replica(engine: Engine, client: EngineClient) -> None:
    from fleetgate.fleet.replicas import ReplicaRegistry

    pinned = adapter("p", pinned=True)
    engine.replica.models = {"smollm2"}
    llama = Replica(id="llama-0", url="http://127.0.0.1:9", kind="llamacpp", models={"smollm2"}, healthy=True)
    pool = pool_for(client, [pinned, adapter("other")])
    await pool.keep_pinned(ReplicaRegistry([engine.replica, llama]))
    assert engine.registered() == {"p"} and llama.adapters == set()  # llama.cpp cannot load at run time


async def test_load_failures_are_clear_errors(engine: Engine, client: EngineClient) -> None:
    pool = pool_for(client, [])
    engine.server.app[STATE].lora.max_loras = 0  # vLLM started without --enable-lora
    with pytest.raises(AdapterLoadError, match="could not load LoRA adapter `a1` \\(400\\)"):
        await pool.ensure(engine.replica, adapter("a1"))
    llama = Replica(id="llama-0", url="http://127.0.0.1:9", kind="llamacpp", healthy=True)
    with pytest.raises(AdapterLoadError, match="cannot load adapters at run time"):
        await pool.ensure(llama, adapter("a1"))
    gone = Replica(id="gone", url=f"http://127.0.0.1:{_closed_port()}", kind="vllm", healthy=True)
    with pytest.raises(AdapterLoadError, match="could not be reached"):
        await pool.ensure(gone, adapter("a1"))
    assert pool.loads == 0


def _closed_port() -> int:
    from fleetgate.local.launcher import free_port

    return free_port()
