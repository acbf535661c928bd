"""The discovery interface and the loop that keeps the replica registry in step with it."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetgate.domain.background import Periodic
from fleetgate.domain.engine_kind import EngineKind
from fleetgate.domain.errors import FleetError
from fleetgate.fleet.replicas import Replica, ReplicaRegistry

log = logging.getLogger(__name__)


class DiscoveryError(FleetError):
    """A discovery source could not be read (API down, bad answer); the current replica set is kept."""


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """A replica as a discovery source describes it (`url` may be https:// and carry a path prefix)."""

    id: str
    url: str
    kind: EngineKind = "openai"
    models: frozenset[str] = frozenset()  # empty: the health checker asks /v1/models
    gpu_type: str = "unknown"
    adapters: frozenset[str] = frozenset()  # adapters fixed at start (llama.cpp --lora); vLLM reports its own
    labels: Mapping[str, str] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)  # sent as `Authorization: Bearer` on every call
    ca_file: Path | None = None

    def replica(self) -> Replica:
        """A new registry entry for this replica (unhealthy until the health checker proves it)."""
        return Replica(
            id=self.id,
            url=self.url,
            kind=self.kind,
            models=set(self.models),
            gpu_type=self.gpu_type,
            adapters=set(self.adapters),
            labels=dict(self.labels),
            api_key=self.api_key,
            ca_file=self.ca_file,
        )


class Discovery(Protocol):
    """A source of replicas."""

    async def list(self) -> builtins.list[ReplicaSpec]:
        """Every replica that should receive traffic now; raise DiscoveryError if the source can't be read."""
        ...


def sync_registry(registry: ReplicaRegistry, specs: Iterable[ReplicaSpec], owned: set[str]) -> tuple[int, int]:
    """Add new replicas, update changed ones, remove the vanished ones among `owned` (updated in place).

    Only replicas this source added are ever removed, so a local fleet or a second source is left alone.
    Returns (added, removed).
    """
    seen: set[str] = set()
    added = 0
    for spec in specs:
        seen.add(spec.id)
        replica = registry.get(spec.id)
        if replica is None:
            registry.add(spec.replica())
            owned.add(spec.id)
            added += 1
            continue
        if replica.url != spec.url:  # same pod name, new address (restarted): health must be proven again
            replica.url = spec.url
            replica.healthy = False
            replica.metrics = None
        replica.kind, replica.gpu_type, replica.labels = spec.kind, spec.gpu_type, dict(spec.labels)
        # The hot path reads a URL's key once (fleet/upstream.py): a new key comes with a new URL or a restart.
        replica.api_key, replica.ca_file = spec.api_key, spec.ca_file
        if spec.models:
            replica.models = set(spec.models)
    gone = owned - seen
    for rid in gone:
        registry.remove(rid)
    owned -= gone
    return added, len(gone)


class DiscoveryLoop(Periodic):
    """Polls a discovery source every `interval` seconds and applies it to the registry."""

    def __init__(
        self,
        discovery: Discovery,
        registry: ReplicaRegistry,
        interval: float = 10.0,
        on_removed: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("fleetgate-discovery", self.refresh, interval)
        self._discovery = discovery
        self._registry = registry
        self._on_removed = on_removed  # e.g. the router's breakers.forget
        self.owned: set[str] = set()
        self.failures = 0

    async def refresh(self) -> bool:
        """Apply the source once; on failure keep the current replicas (an API blip must not empty the fleet)."""
        try:
            specs = await self._discovery.list()
        except DiscoveryError as exc:
            self.failures += 1
            log.warning("discovery failed, keeping %d replicas: %s", len(self.owned), exc)
            return False
        before = set(self.owned)
        added, removed = sync_registry(self._registry, specs, self.owned)
        if self._on_removed is not None:
            for rid in before - self.owned:
                self._on_removed(rid)
        if added or removed:
            log.info("discovery: +%d -%d replicas (%d now)", added, removed, len(self.owned))
        return True
