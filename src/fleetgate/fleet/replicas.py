"""The replica registry: what engines exist, what they serve, and whether they are healthy right now."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.fleet.metrics import ReplicaMetrics


@dataclass
class Replica:
    """One engine endpoint the gateway may send requests to.

    `url` is the engine's base: scheme, host, port and any path prefix (`https://host/some/prefix`); every call
    joins its path to it. `api_key` goes out as `Authorization: Bearer` on every call (never shown: repr=False,
    not in to_json); `ca_file` is trusted for https engines (fleet/client.py).
    """

    id: str
    url: str
    kind: EngineKind = "openai"
    models: set[str] = field(default_factory=set)
    gpu_type: str = "unknown"
    healthy: bool = False
    last_error: str | None = None
    checked_at: float = 0.0
    in_flight: int = 0
    local_pid: int | None = None
    # Routing state (issue 6). adapters: LoRA adapters loaded now, from the engine's own answer; labels: from
    # discovery; metrics: the scraper's last snapshot (check .fresh()); in_flight_tokens: estimated prompt tokens
    # this gateway has in flight there, counted by the router (never stale).
    adapters: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)
    metrics: ReplicaMetrics | None = None
    in_flight_tokens: int = 0
    context_len: int | None = None  # the engine's context window per request (llama.cpp: per slot)
    max_adapters: int | None = None  # LoRA adapters it holds at once; None: the pool's configured default
    adapters_loading: set[str] = field(default_factory=set)  # loads this gateway has in flight there
    # Bumped by every load/unload this gateway makes: a model list fetched before one is not applied after it.
    adapter_epoch: int = 0
    api_key: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    def serves(self, model: str) -> bool:
        """True if this replica lists the model (an empty list means 'not known yet': never matches)."""
        return model in self.models

    def mark(self, healthy: bool, error: str | None = None) -> None:
        """Record the outcome of a health check or a request."""
        self.healthy = healthy
        self.last_error = error
        self.checked_at = time.time()

    def to_json(self) -> dict[str, object]:
        """Plain view for status output and the admin API."""
        return {
            "id": self.id,
            "url": self.url,
            "kind": self.kind,
            "models": sorted(self.models),
            "gpu_type": self.gpu_type,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "in_flight": self.in_flight,
            "pid": self.local_pid,
        }


class ReplicaRegistry:
    """All replicas known to this gateway process, by id."""

    def __init__(self, replicas: Iterable[Replica] = ()) -> None:
        self._by_id: dict[str, Replica] = {}
        for replica in replicas:
            self.add(replica)

    def add(self, replica: Replica) -> None:
        """Register or replace a replica."""
        self._by_id[replica.id] = replica

    def remove(self, replica_id: str) -> None:
        """Forget a replica."""
        self._by_id.pop(replica_id, None)

    def get(self, replica_id: str) -> Replica | None:
        """Look a replica up by id."""
        return self._by_id.get(replica_id)

    def all(self) -> list[Replica]:
        """Every replica, in registration order."""
        return list(self._by_id.values())

    def models(self) -> set[str]:
        """Every model name some replica serves."""
        names: set[str] = set()
        for replica in self._by_id.values():
            names |= replica.models
        return names

    def candidates(self, model: str) -> list[Replica]:
        """Healthy replicas that serve the model."""
        return [r for r in self._by_id.values() if r.healthy and r.serves(model)]

    def serving(self, model: str) -> list[Replica]:
        """Replicas that serve the model, healthy or not."""
        return [r for r in self._by_id.values() if r.serves(model)]

    def owner_of(self, url: str) -> Replica | None:
        """The replica a URL belongs to: its base URL, or the longest base it extends with a path."""
        best: Replica | None = None
        for replica in self._by_id.values():
            base = replica.url
            if (url == base or url.startswith(base + "/")) and (best is None or len(base) > len(best.url)):
                best = replica
        return best
