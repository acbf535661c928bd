"""The shipped plugins, registered by name, and `make_router`, which builds a router from config by those names.

Adding a scorer: its class in its own module under routing/scorers/ (see routing/base.Scorer), one
`SCORERS.register(...)` line below, one test file. Its parameters, default weight and inputs travel with it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleetgate.domain.errors import ConfigError
from fleetgate.routing.base import Filter, Policy
from fleetgate.routing.breaker import BreakerRegistry
from fleetgate.routing.context import RouterState
from fleetgate.routing.filters import AdapterAvailable, BreakerClosed, Healthy, ServesModel
from fleetgate.routing.pipeline import RoutingPipeline
from fleetgate.routing.policies import LeastLoadPolicy, ScorePolicy, SessionPolicy
from fleetgate.routing.prefix_index import PrefixIndex
from fleetgate.routing.registry import ScorerRegistry
from fleetgate.routing.round_robin import RoundRobinRouter
from fleetgate.routing.scorers.adapter import AdapterScorer
from fleetgate.routing.scorers.in_flight import InFlightScorer
from fleetgate.routing.scorers.kv import KvScorer
from fleetgate.routing.scorers.prefix import PrefixScorer
from fleetgate.routing.scorers.queue import QueueScorer
from fleetgate.routing.scorers.session import SessionScorer
from fleetgate.routing.scorers.tokens import TokensScorer
from fleetgate.routing.settings import RoutingParams
from fleetgate.routing.stats import RouterStats

# Registration order is summing and explaining order in the `score` policy: add new scorers at the end.
SCORERS = ScorerRegistry()
SCORERS.register(PrefixScorer)
SCORERS.register(SessionScorer)
SCORERS.register(AdapterScorer)
SCORERS.register(QueueScorer)
SCORERS.register(InFlightScorer)
SCORERS.register(KvScorer)
SCORERS.register(TokensScorer)

POLICIES: dict[str, Callable[[RoutingParams, RouterStats], Policy]] = {
    "round_robin": lambda p, st: RoundRobinRouter(),
    "least_load": lambda p, st: LeastLoadPolicy(),
    "session": lambda p, st: SessionPolicy(),
    "prefix": lambda p, st: ScorePolicy("prefix", SCORERS.weighted(p, {PrefixScorer.name: 1.0}), p.settings, st),
    "lora": lambda p, st: ScorePolicy("lora", SCORERS.weighted(p, {AdapterScorer.name: 1.0}), p.settings, st),
    "score": lambda p, st: ScorePolicy("score", SCORERS.weighted(p, p.weights), p.settings, st),
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
    """Build the policy registered under `name` with `routing.params` (see routing/settings.py); ConfigError
    naming the bad key (`routing.params.queue.scale`) when they do not check out."""
    factory = POLICIES.get(name)
    if factory is None:
        raise ConfigError(f"routing.policy: unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    checked = RoutingParams.parse(params, SCORERS.sections(), SCORERS.default_weights(), where="routing.params")
    stats = RouterStats()
    breakers = BreakerRegistry(checked.breaker, clock)
    index = PrefixIndex(checked.prefix.settings(), clock)
    state = RouterState(checked.settings, index, clock, rng or random.Random(checked.settings.seed))
    filters = [*default_filters(breakers), *extra_filters]
    return RoutingPipeline(factory(checked, stats), filters, state, breakers, stats)
