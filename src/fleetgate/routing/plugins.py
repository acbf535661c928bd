"""Plugin Protocols and the name -> factory registries, so config chooses policies and weights by name."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fleetgate.domain.errors import ConfigError
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.breaker import BreakerRegistry
from fleetgate.routing.context import RouteContext
from fleetgate.routing.filters import AdapterAvailable, BreakerClosed, Healthy, ServesModel
from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.policies import LeastLoadPolicy, ScorePolicy, SessionPolicy
from fleetgate.routing.prefix_index import PrefixIndex
from fleetgate.routing.round_robin import RoundRobinRouter
from fleetgate.routing.router import RouteRequest
from fleetgate.routing.scorers import (
    AdapterScorer,
    InFlightScorer,
    KvScorer,
    PrefixScorer,
    QueueScorer,
    Scores,
    SessionScorer,
    TokensScorer,
)
from fleetgate.routing.settings import RoutingSettings
from fleetgate.routing.stats import RouterStats


class Filter(Protocol):
    """Drops candidates that cannot take the request."""

    name: str

    def keep(self, request: RouteRequest, candidates: list[Replica]) -> list[Replica]:
        """The candidates that may take the request (may be empty; the pipeline then skips this filter)."""
        ...


class Scorer(Protocol):
    """Rates every candidate in [0, 1]; higher is better."""

    name: str

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """One value per candidate in order, or {index: value} with the rest 0, or None: all equal."""
        ...


class Policy(Protocol):
    """Chooses one of the filtered candidates."""

    name: str
    uses_prefix: bool  # the pipeline hashes the prompt and records it only for policies that read the index

    def choose(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> tuple[int, str]:
        """Index into candidates (never empty) and a short reason."""
        ...


SCORERS: dict[str, Callable[[RoutingSettings], Scorer]] = {
    "prefix": lambda s: PrefixScorer(),
    "session": lambda s: SessionScorer(),
    "adapter": lambda s: AdapterScorer(),
    "queue": lambda s: QueueScorer(s.queue_scale),
    "in_flight": lambda s: InFlightScorer(s.in_flight_scale),
    "tokens": lambda s: TokensScorer(s.tokens_scale),
    "kv": lambda s: KvScorer(),
}


def _weighted(settings: RoutingSettings, weights: Mapping[str, float]) -> list[tuple[Scorer, float]]:
    return [(SCORERS[name](settings), w) for name, w in weights.items() if w > 0]


POLICIES: dict[str, Callable[[RoutingSettings, RouterStats], Policy]] = {
    "round_robin": lambda s, st: RoundRobinRouter(),
    "least_load": lambda s, st: LeastLoadPolicy(),
    "session": lambda s, st: SessionPolicy(),
    "prefix": lambda s, st: ScorePolicy("prefix", _weighted(s, {"prefix": 1.0}), s, st),
    "lora": lambda s, st: ScorePolicy("lora", _weighted(s, {"adapter": 1.0}), s, st),
    "score": lambda s, st: ScorePolicy("score", _weighted(s, s.weights), s, st),
}


def default_filters(breakers: BreakerRegistry) -> list[Filter]:
    """Serves the model, healthy, breaker admits, adapter loaded or loadable: in that order."""
    return [ServesModel(), Healthy(), BreakerClosed(breakers), AdapterAvailable()]


def make_router(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    extra_filters: Sequence[Filter] = (),
) -> RoutingPipeline:
    """Build the routing policy registered under `name`, with its parameters (see RoutingSettings)."""
    factory = POLICIES.get(name)
    if factory is None:
        raise ConfigError(f"routing.policy: unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    settings = RoutingSettings.from_params(params, where="routing.params")
    stats = RouterStats()
    breakers = BreakerRegistry(settings.breaker, clock)
    index = PrefixIndex(settings.prefix, clock)
    return RoutingPipeline(
        factory(settings, stats),
        [*default_filters(breakers), *extra_filters],
        settings,
        breakers=breakers,
        index=index,
        stats=stats,
        clock=clock,
        rng=rng,
    )
