"""Shared builders for the routing tests."""

from __future__ import annotations

import random

from fleetgate.domain.engine_kind import EngineKind
from fleetgate.fleet.metrics import ReplicaMetrics
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.context import RouteContext
from fleetgate.routing.prefix_index import PrefixIndex
from fleetgate.routing.ring import RingCache
from fleetgate.routing.settings import RoutingSettings


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


def replicas(n: int, model: str = "m", kind: EngineKind = "vllm") -> list[Replica]:
    """n healthy replicas serving `model`."""
    return [
        Replica(id=f"r{i}", url=f"http://127.0.0.1:{9000 + i}", kind=kind, models={model}, healthy=True)
        for i in range(n)
    ]


def metrics(
    now: float, waiting: float = 0, running: float = 0, kv: float | None = None, slots: int | None = None
) -> ReplicaMetrics:
    """A fresh snapshot."""
    return ReplicaMetrics(scraped_at=now, waiting=waiting, running=running, kv_usage=kv, total_slots=slots)


def context(
    candidates: list[Replica],
    now: float = 1000.0,
    settings: RoutingSettings | None = None,
    index: PrefixIndex | None = None,
    hashes: list[int] | None = None,
    seed: int = 0,
) -> RouteContext:
    """A RouteContext over candidates."""
    settings = settings or RoutingSettings()
    return RouteContext(
        candidates,
        now,
        settings,
        index or PrefixIndex(settings.prefix, clock=lambda: now),
        RingCache(settings.vnodes),
        random.Random(seed),
        hashes or [],
    )
