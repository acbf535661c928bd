"""Active health checks and model discovery for every replica; the proxy adds passive marks on failures."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from fleetgate.background import Background
from fleetgate.config import EngineKind
from fleetgate.fleet.client import EngineClient
from fleetgate.fleet.engines.base import adapter_ids, model_ids
from fleetgate.fleet.engines.registry import adapter_for
from fleetgate.fleet.replicas import Replica, ReplicaRegistry

log = logging.getLogger(__name__)


def context_of(listing: Any) -> int | None:
    """The context window an engine reports in its model list: vLLM `max_model_len`, llama.cpp `meta.n_ctx`."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return None
    found: list[int] = []
    for item in listing["data"]:
        if not isinstance(item, dict):
            continue
        meta = item.get("meta")
        value = item.get("max_model_len") or (meta.get("n_ctx") if isinstance(meta, dict) else None)
        if isinstance(value, int) and value > 0:
            found.append(value)
    return min(found) if found else None


_OWNERS: dict[str, EngineKind] = {"vllm": "vllm", "llamacpp": "llamacpp", "sglang": "sglang"}


def detected_kind(listing: Any) -> EngineKind | None:
    """The engine behind a plain `--engine URL`, from `owned_by` in its model list (vLLM, llama.cpp and SGLang
    each sign their entries), so its metrics, slots, LoRA endpoints and cache salting are used without config."""
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        return None
    for item in listing["data"]:
        if isinstance(item, dict) and (kind := _OWNERS.get(str(item.get("owned_by", "")).lower())) is not None:
            return kind
    return None


class HealthChecker:
    """Checks every replica each `interval` seconds and refreshes its model list."""

    def __init__(self, registry: ReplicaRegistry, client: EngineClient, interval: float, timeout: float) -> None:
        self._registry = registry
        self._client = client
        self._interval = interval
        self._timeout = timeout
        self._background = Background("fleetgate-health")

    async def check(self, replica: Replica) -> None:
        """Probe one replica and record the result."""
        adapter = adapter_for(replica.kind)
        epoch = replica.adapter_epoch
        try:
            if adapter.health_path != adapter.models_path:
                await self._client.get_json(replica.url + adapter.health_path, self._timeout)
            listing = await self._client.get_json(replica.url + adapter.models_path, self._timeout)
            models = model_ids(listing)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if replica.healthy:
                log.warning("replica %s unhealthy: %s", replica.id, exc or type(exc).__name__)
            replica.mark(False, f"{type(exc).__name__}: {exc}"[:200])
            return
        adapters = adapter_ids(listing)  # what the engine itself says is loaded
        if models - adapters:
            replica.models = models - adapters  # vLLM lists loaded adapters as models: they are not bases
        replica.context_len = context_of(listing) or replica.context_len
        if replica.adapter_epoch == epoch and not replica.adapters_loading:
            # Only a list fetched after this gateway's last load or unload there says what is loaded now.
            replica.adapters = adapters
        if replica.kind == "openai":
            replica.kind = detected_kind(listing) or "openai"
        if not replica.healthy:
            log.info("replica %s healthy (%s)", replica.id, ", ".join(sorted(replica.models)))
        replica.mark(True)

    async def check_all(self) -> None:
        """Probe every replica once, concurrently."""
        await asyncio.gather(*(self.check(r) for r in self._registry.all()))

    def start(self) -> None:
        """Run the periodic loop in the background."""
        self._background.start(self._loop)

    async def stop(self) -> None:
        """Stop the periodic loop."""
        await self._background.stop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_all()
