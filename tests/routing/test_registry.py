"""A new scorer is one class and one registration line: proven with a scorer that exists only in this module."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest

from fleetgate.domain.errors import ConfigError
from fleetgate.fleet.replicas import Replica
from fleetgate.routing.base import PREFIX_INDEX, Scorer, Scores
from fleetgate.routing.context import RouteContext
from fleetgate.routing.params import param, parameters
from fleetgate.routing.plugins import SCORERS, make_router
from fleetgate.routing.registry import ScorerRegistry
from fleetgate.routing.router import RouteRequest
from tests.routing.helpers import check_documented, replicas


class ZoneScorer(Scorer):
    """Prefers replicas in the configured zone (their `zone` label).

    Inputs: replica.labels
    Parameters (routing.params.zone):
        zone: str = 'a' -- the zone to prefer
        bonus: float >= 0 = 1.0 -- the score of a replica in that zone
    Weight: 5.0

    Example:
        ```yaml
        routing:
          policy: score
          params:
            weights: {zone: 5.0}
            zone: {zone: b, bonus: 1.0}
        ```
    """

    name = "zone"
    weight = 5.0
    inputs = ("replica.labels",)

    @parameters
    class Params:
        """The zone scorer's parameters."""

        zone: str = "a"
        bonus: float = param(1.0, ge=0)

    def __init__(self, params: ZoneScorer.Params) -> None:
        self._zone = params.zone
        self._bonus = params.bonus

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """The bonus where the zone label matches (sparse)."""
        return {i: self._bonus for i, r in enumerate(candidates) if r.labels.get("zone") == self._zone} or None


class EchoScorer(Scorer):
    """Reads the prefix index without being the prefix scorer.

    Inputs: prefix_index
    Parameters: none
    Weight: 0.5
    """

    name = "echo"
    weight = 0.5
    inputs = (PREFIX_INDEX,)

    def score(self, request: RouteRequest, candidates: Sequence[Replica], ctx: RouteContext) -> Scores:
        """The prefix ratios as they are."""
        return ctx.prefix_ratios() or None


@pytest.fixture
def zone() -> Iterator[type[ZoneScorer]]:
    """ZoneScorer registered for one test."""
    SCORERS.register(ZoneScorer)  # the one registration line
    try:
        yield ZoneScorer
    finally:
        SCORERS.unregister(ZoneScorer.name)


def _zoned(n: int) -> list[Replica]:
    reps = replicas(n)
    for i, r in enumerate(reps):
        r.labels = {"zone": "ab"[i % 2]}
    return reps


def test_a_registered_scorer_routes_with_its_own_params_and_weight(zone: type[ZoneScorer]) -> None:
    check_documented(zone, zone.inputs, zone.weight)
    reps = _zoned(3)  # zones a, b, a: one replica in b
    router = make_router("score", {"zone": {"zone": "b"}}, rng=random.Random(3))
    picks = [router.pick(RouteRequest(model="m"), reps) for _ in range(20)]
    assert {d.replica.labels["zone"] for d in picks} == {"b"}
    assert {d.reason for d in picks} == {"zone:1.00"}
    assert "scorer:zone" in router.stats.timings
    # Its default weight applies without any config; a configured weight of 0 turns it off.
    default = make_router("score", rng=random.Random(3))
    assert {default.pick(RouteRequest(model="m"), reps).replica.labels["zone"] for _ in range(20)} == {"a"}
    off = make_router("score", {"weights": {"zone": 0}, "zone": {"zone": "b"}}, rng=random.Random(3))
    assert {off.pick(RouteRequest(model="m"), reps).replica.labels["zone"] for _ in range(40)} == {"a", "b"}


def test_a_registered_scorers_params_are_checked_by_name(zone: type[ZoneScorer]) -> None:
    with pytest.raises(ConfigError, match=r"routing\.params\.zone\.bonus: must be >= 0"):
        make_router("score", {"zone": {"bonus": -1}})
    with pytest.raises(ConfigError, match=r"routing\.params\.zone\.zone: must be a string"):
        make_router("score", {"zone": {"zone": 3}})
    with pytest.raises(ConfigError, match=r"routing\.params\.zone\.zones: unknown parameter; known: bonus, zone"):
        make_router("score", {"zone": {"zones": "b"}})


def test_unregistered_it_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"routing\.params\.zone: unknown routing parameter or scorer"):
        make_router("score", {"zone": {"zone": "b"}})
    with pytest.raises(ConfigError, match=r"routing\.params\.weights\.zone: unknown scorer"):
        make_router("score", {"weights": {"zone": 1}})


def test_reading_the_prefix_index_is_what_makes_the_router_record_prompts() -> None:
    prompt = RouteRequest(model="m", tenant="t", prompt_text="p" * 1000)
    without = make_router("score", {"weights": {"prefix": 0}})
    without.pick(prompt, replicas(2))
    assert len(without.index) == 0  # nobody reads the index: no prompt hashed, nothing recorded
    SCORERS.register(EchoScorer)
    try:
        echoing = make_router("score", {"weights": {"prefix": 0}})
        echoing.pick(prompt, replicas(2))
        assert len(echoing.index) > 0
    finally:
        SCORERS.unregister(EchoScorer.name)


def test_registration_refuses_incomplete_or_clashing_scorers() -> None:
    registry = ScorerRegistry()
    registry.register(ZoneScorer)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ZoneScorer)

    class Nameless(Scorer):
        """No name."""

    class Reserved(ZoneScorer):
        """Takes the breaker's section."""

        name = "breaker"

    class Blind(Scorer):
        """Reads something no context provides."""

        name = "blind"
        inputs = ("replica.mood",)

    class Negative(Scorer):
        """A weight below 0."""

        name = "negative"
        weight = -1.0

    for cls, message in [
        (Nameless, "must be an identifier"),
        (Reserved, "routing.params.breaker is the router's own"),
        (Blind, "unknown inputs"),
        (Negative, "weight must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            registry.register(cls)
    assert [cls.name for cls in registry] == ["zone"]
