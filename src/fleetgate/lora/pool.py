"""The LoRA pool: loads adapters on demand onto warm replicas of their base model, and unloads the least used.

What a replica has loaded is the engine's own answer (its `/v1/models`, refreshed by every health check, and the
status of each load/unload call), never a guess from request history. Two requests for one cold adapter on one
replica cause one load (single flight). An adapter some request is using on a replica is never unloaded there;
pinned adapters are never unloaded and are loaded onto every replica of their base that can load at run time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import aiohttp
import orjson

from fleetgate.domain.background import Periodic
from fleetgate.domain.errors import UpstreamError
from fleetgate.engines.registry import adapter_for
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.replicas import Replica, ReplicaRegistry
from fleetgate.lora.catalog import Adapter, AdapterCatalog

log = logging.getLogger(__name__)

_JSON = {"content-type": "application/json"}
LoadObserver = Callable[[str, str, str, float], None]  # (replica id, adapter, outcome, seconds)
POPULARITY_HALF_LIFE = 60.0


class AdapterLoadError(UpstreamError):
    """An engine refused or failed to load an adapter; the proxy tries another replica or answers 502."""


def can_load(replica: Replica) -> bool:
    """True if the replica's engine loads adapters while serving (its dialect has LoRA endpoints)."""
    return adapter_for(replica.kind).runtime_lora


class AdapterPool:
    """One per gateway process; `ensure` before forwarding an adapter request, inside `using`."""

    def __init__(
        self,
        client: EngineClient,
        catalog: AdapterCatalog,
        *,
        max_per_replica: int,
        load_timeout: float,
        pin_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.max_per_replica = max_per_replica
        self.load_timeout = load_timeout
        self.clock = clock
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._in_use: dict[tuple[str, str], int] = {}
        # Requests per adapter, decayed (half-life POPULARITY_HALF_LIFE s): eviction keeps popular adapters resident.
        self._popularity: dict[str, tuple[float, float]] = {}  # adapter -> (score, at)
        self.loads = 0
        self.unloads = 0
        self.observer: LoadObserver | None = None
        self.pin_interval = pin_interval
        self._pins: Periodic | None = None

    def start(self, registry: ReplicaRegistry) -> None:
        """Keep pinned adapters loaded, in the background."""

        if self._pins is None:
            self._pins = Periodic("fleetgate-adapter-pins", lambda: self.keep_pinned(registry), self.pin_interval)
            self._pins.start()

    async def stop(self) -> None:
        """Stop the pinning loop."""
        if self._pins is not None:
            await self._pins.stop()
            self._pins = None

    def limit(self, replica: Replica) -> int:
        """How many adapters the replica holds at once (vLLM `--max-loras`; per replica when discovery says)."""
        return replica.max_adapters or self.max_per_replica

    @contextmanager
    def using(self, replica: Replica, adapter: str) -> Iterator[None]:
        """Mark the adapter busy on the replica for the request's lifetime (never unloaded while busy)."""
        key = (replica.id, adapter)
        self._in_use[key] = self._in_use.get(key, 0) + 1
        now = self._last_used[key] = self.clock()
        self._popularity[adapter] = (self.popularity(adapter, now) + 1.0, now)
        try:
            yield
        finally:
            left = self._in_use[key] - 1
            if left:
                self._in_use[key] = left
            else:
                del self._in_use[key]
            self._last_used[key] = self.clock()

    def popularity(self, adapter: str, now: float | None = None) -> float:
        """Recent requests for the adapter across the fleet, exponentially decayed."""
        found = self._popularity.get(adapter)
        if found is None:
            return 0.0
        score, at = found
        now = self.clock() if now is None else now
        return float(score * 0.5 ** ((now - at) / POPULARITY_HALF_LIFE))

    async def ensure(self, replica: Replica, adapter: Adapter) -> bool:
        """Make sure `adapter` is loaded on `replica`; True if this call had to wait for a load (cold)."""
        if adapter.name in replica.adapters:
            return False
        key = (replica.id, adapter.name)
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[key] = pending
            replica.adapters_loading.add(adapter.name)
            try:
                await self._load(replica, adapter)
            except BaseException as exc:
                # Waiters see the same failure; a cancelled loader must not leave them waiting forever.
                pending.set_exception(
                    exc
                    if isinstance(exc, AdapterLoadError)
                    else AdapterLoadError(f"loading `{adapter.name}` on {replica.id} was interrupted")
                )
                pending.exception()  # retrieved: no "never retrieved" warning when nobody else waited
                raise
            else:
                pending.set_result(None)
            finally:
                self._loading.pop(key, None)
                replica.adapters_loading.discard(adapter.name)
            return True
        await asyncio.shield(pending)
        return True

    async def _load(self, replica: Replica, adapter: Adapter) -> None:
        endpoints = adapter_for(replica.kind).lora
        if endpoints is None:
            raise AdapterLoadError(f"replica {replica.id} ({replica.kind}) cannot load adapters at run time")
        await self._make_room(replica)
        started = self.clock()
        status, detail = await self._post(replica, *endpoints.load_request(adapter.name, adapter.path))
        outcome = endpoints.load_outcome(status, detail)
        if outcome is not None:
            replica.adapters = replica.adapters | {adapter.name}
            replica.adapter_epoch += 1
            self.loads += outcome == "loaded"
            self._last_used[(replica.id, adapter.name)] = self.clock()
            self._observe(replica, adapter.name, outcome, started)
            log.info("loaded adapter %s on %s in %.2fs", adapter.name, replica.id, self.clock() - started)
            return
        self._observe(replica, adapter.name, "failed", started)
        raise AdapterLoadError(
            f"replica {replica.id} could not load LoRA adapter `{adapter.name}` ({status}): {detail[:300]}"
        )

    async def _make_room(self, replica: Replica) -> None:
        pinned = {a.name for a in self.catalog.pinned()}
        loaded = [a for a in replica.adapters if (replica.id, a) not in self._loading]
        while len(loaded) >= self.limit(replica):
            idle = [a for a in loaded if a not in pinned and not self._in_use.get((replica.id, a))]
            if not idle:
                # Every slot is busy or pinned: the engine keeps more in CPU memory (slower swaps), never fails.
                log.warning("replica %s has no idle adapter to unload; loading over its limit", replica.id)
                return
            # Least popular first (recency breaks ties): under a skewed mix, plain LRU let one request for a
            # tail adapter evict a hot one, which the next request then had to load again.
            now = self.clock()
            victim = min(idle, key=lambda a: (self.popularity(a, now), self._last_used.get((replica.id, a), 0.0)))
            await self.unload(replica, victim)
            loaded.remove(victim)

    async def unload(self, replica: Replica, name: str) -> None:
        """Unload one adapter (an engine that says it is not there has it unloaded too)."""
        endpoints = adapter_for(replica.kind).lora
        if endpoints is None:
            return  # adapters fixed at the engine's start: nothing to unload, its model list stays the truth
        started = self.clock()
        status, detail = await self._post(replica, *endpoints.unload_request(name))
        outcome = endpoints.unload_outcome(status)
        if outcome is None:
            raise AdapterLoadError(f"replica {replica.id} could not unload `{name}` ({status}): {detail[:300]}")
        replica.adapters = replica.adapters - {name}
        replica.adapter_epoch += 1
        self._last_used.pop((replica.id, name), None)
        self.unloads += outcome == "unloaded"
        self._observe(replica, name, "unloaded", started)

    async def _post(self, replica: Replica, path: str, body: dict[str, str]) -> tuple[int, str]:
        try:
            async with (
                asyncio.timeout(self.load_timeout),
                self.client.session.post(replica.url + path, data=orjson.dumps(body), headers=_JSON) as resp,
            ):
                return resp.status, (await resp.read()).decode(errors="replace")
        except TimeoutError:
            raise AdapterLoadError(
                f"replica {replica.id} did not answer {path} within {self.load_timeout:.0f}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise AdapterLoadError(f"replica {replica.id} could not be reached for {path}: {exc}") from None

    def _observe(self, replica: Replica, adapter: str, outcome: str, started: float) -> None:
        if self.observer is not None:
            self.observer(replica.id, adapter, outcome, self.clock() - started)

    async def keep_pinned(self, registry: ReplicaRegistry) -> None:
        """Load every pinned adapter onto each healthy replica of its base that can load at run time."""
        for replica in registry.all():
            if replica.max_adapters is None and can_load(replica):
                replica.max_adapters = self.max_per_replica  # so the router can see where a load needs no unload
        for adapter in self.catalog.pinned():
            for replica in registry.candidates(adapter.base_model):
                if can_load(replica) and adapter.name not in replica.adapters:
                    try:
                        await self.ensure(replica, adapter)
                    except AdapterLoadError as exc:
                        log.warning("pinned adapter: %s", exc)
